# syntax=docker/dockerfile:1
# aeserve: the committed autoencoders behind the REST API, on CPU (LiteRT; no TensorFlow in the image).
#
#   docker build -t aeserve:0.1.0 .
#   docker run --rm -p 8000:8000 aeserve:0.1.0          # or: docker compose up --wait
#
# Configuration is by environment variables only: the service's AESERVE_* settings (app/settings.py,
# README's table) and uvicorn's WEB_CONCURRENCY (worker processes; each loads its own models, ~620 MiB).
# The image installs through `make install`, the same target as `make serve`: there is one install path.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: make and pip run here; only the virtual environment and the sources go on -------------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/aeserve
# What `pip install -e .` needs: the project metadata and the two packages (no models: they change
# the image's last layer only, and never the dependencies).
COPY pyproject.toml Makefile README.md LICENSE ./
COPY app/ app/
COPY training/ training/
# The pip cache lives in a BuildKit cache mount: rebuilds after a code change reuse the downloaded
# wheels, and the cache never enters an image layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    make install VENV=/opt/venv

# --- runtime: slim Python, the venv, the sources and the models; no make, no pip cache, not root -------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aeserve" \
      org.opencontainers.image.description="MNIST and Fashion-MNIST autoencoders over REST" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 aeserve \
    && useradd --system --uid 10001 --gid aeserve --home-dir /home/aeserve --create-home \
       --shell /usr/sbin/nologin aeserve
# The editable install points into /srv/aeserve, so the sources keep the path they were installed at.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /srv/aeserve /srv/aeserve
# The committed models (SavedModel and model.tflite), baked in; owned by root, so the service can read but not change them.
COPY models/ /srv/aeserve/models/
WORKDIR /srv/aeserve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AESERVE_MODELS_DIR=/srv/aeserve/models \
    WEB_CONCURRENCY=1 \
    UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=20 \
    AESERVE_GRPC_HOST=0.0.0.0
USER 10001:10001
# 8000: HTTP (REST); 8081: the Open Inference Protocol over gRPC (AESERVE_GRPC_PORT)
EXPOSE 8000 8081
# Liveness: the process answers. Readiness (models verified, loaded, warmed) is GET /readyz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# uvicorn reads WEB_CONCURRENCY for --workers and UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN for the seconds it lets
# requests in flight finish after SIGTERM (20: inside Kubernetes' default 30 s grace).
# app.serve is uvicorn's command line that exits 0 after a graceful stop.
CMD ["/opt/venv/bin/python", "-m", "app.serve", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
