# syntax=docker/dockerfile:1
#
# QLens service images: one Dockerfile, one target per service. The three images share every layer
# but the last, and are named as the chart expects (ghcr.io/quantumlayer/qlens-<service>:<tag>):
#
#   docker build --target gateway -t ghcr.io/quantumlayer/qlens-gateway:v1.0.0 .
#   docker build --target router  -t ghcr.io/quantumlayer/qlens-router:v1.0.0 .
#   docker build --target cache   -t ghcr.io/quantumlayer/qlens-cache:v1.0.0 .
#
# Without a Docker engine, scripts/build-images builds the same file with buildah (daemonless) from
# a Debian bookworm base made with mmdebstrap (BASE=localhost/qlens-python-base:bookworm) and writes
# OCI archives; see the README's "Building the images".
#
# Reproducible: the services' runtime dependencies are installed from requirements/services.txt,
# pinned with hashes by `uv pip compile --universal` (--require-hashes; refresh: `nox -s lock`).
# Small: only what the services import (no qlensctl, Kubernetes client or Helm SDK), no
# pip/setuptools and no packages' test folders in the runtime image. Non-root: uid/gid 10001, the chart's runAsUser. Read-only root
# filesystem friendly: code is byte-compiled at build time and nothing is written outside /tmp
# (an emptyDir in the pod). Configuration arrives at run time (QLENS_CONFIG, mounted Secrets); no
# secret is baked in. /bin/sh is there for `kubectl exec` (troubleshooting in the guide).

# Any Debian-like image with Python 3.11 on PATH as `python` and the venv module.
ARG BASE=python:3.11-slim

# --- build: a virtualenv with the services' locked runtime dependencies ---------------------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements/services.txt /tmp/services.txt
RUN python -m venv /opt/qlens \
 && /opt/qlens/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/services.txt \
 && /opt/qlens/bin/pip uninstall -y -q pip setuptools \
 && find /opt/qlens -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
 && rm -f /opt/qlens/bin/activate* /opt/qlens/bin/Activate.ps1
COPY services /app/services
RUN /opt/qlens/bin/python -m compileall -q /opt/qlens/lib /app/services

# --- runtime: what all three images share ---------------------------------------------------------
FROM ${BASE} AS runtime
RUN groupadd --system --gid 10001 qlens \
 && useradd --system --uid 10001 --gid qlens --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin qlens
COPY --from=build /opt/qlens /opt/qlens
COPY --from=build /app /app
ENV PATH=/opt/qlens/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QLENS_HOST=0.0.0.0 \
    QLENS_CONFIG=/etc/qlens/config.yaml
WORKDIR /app
USER 10001:10001
# OCI labels (scripts/build-images passes them; last, so a new revision reuses every layer above)
ARG VERSION=dev REVISION=unknown CREATED=1970-01-01T00:00:00Z SOURCE=https://github.com/quantumlayer/qlens
LABEL org.opencontainers.image.title="QLens" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"

# --- one target per service (liveness GET /health, readiness GET /health/ready, metrics /metrics) -
FROM runtime AS cache
ENV QLENS_PORT=8082
EXPOSE 8082
CMD ["python", "-m", "services.cache"]

FROM runtime AS router
ENV QLENS_PORT=8081
EXPOSE 8081
CMD ["python", "-m", "services.router"]

# the last stage is also what a plain `docker build .` produces
FROM runtime AS gateway
ENV QLENS_PORT=8080
EXPOSE 8080
CMD ["python", "-m", "services.gateway"]
