# syntax=docker/dockerfile:1
#
# QLens service images: one Dockerfile, one target per service. The three images share every layer
# but the last, and are named as the chart expects (ghcr.io/quantumlayer/qlens-<service>:<tag>):
#
#   docker build --target gateway -t ghcr.io/quantumlayer/qlens-gateway:v1.0.0 .
#   docker build --target router  -t ghcr.io/quantumlayer/qlens-router:v1.0.0 .
#   docker build --target cache   -t ghcr.io/quantumlayer/qlens-cache:v1.0.0 .
#
# Small: python slim plus only what the services import (no qlensctl, Kubernetes client or Helm
# SDK). Non-root: uid/gid 10001, the chart's runAsUser. Read-only root filesystem friendly: the
# code is byte-compiled at build time and nothing is written outside /tmp (an emptyDir in the pod).
# Configuration arrives at run time (QLENS_CONFIG, mounted Secrets); no secret is baked in.

ARG PYTHON_VERSION=3.11

# --- build: a virtualenv with the services' runtime dependencies ----------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/qlens
# The services' share of pyproject.toml's dependencies (the rest is qlensctl's).
RUN /opt/qlens/bin/pip install \
      "fastapi>=0.110" "uvicorn[standard]>=0.29" "httpx>=0.27" "aiohttp>=3.9" "openai>=1.30" \
      "boto3>=1.34" "azure-identity>=1.15" "redis>=5" "prometheus-client>=0.20" "pydantic>=2.6" \
      "orjson>=3.9" "pyyaml>=6"
COPY services /app/services
RUN /opt/qlens/bin/python -m compileall -q /app/services

# --- runtime: what all three images share ---------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
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
