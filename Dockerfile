# aeserve: the committed autoencoders behind the REST API, on CPU (LiteRT; no TensorFlow in the image).
#
#   make image                                          # docker build, tagged and labelled with pyproject's version
#   docker run --rm -p 8000:8000 aeserve:0.1.0          # or: docker compose up --wait
#
# Configuration is by environment variables only: the service's AESERVE_* settings (app/settings.py,
# README's table) and uvicorn's WEB_CONCURRENCY (worker processes; each loads its own models, ~620 MiB).
# The image installs through `make install`, the same target as `make serve`: there is one install path.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
# The image's version label: pyproject.toml's version, which `make image` passes (--build-arg VERSION=...).
ARG VERSION=unknown

# --- build: make and pip run here; only the virtual environment and the sources go on -------------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/aeserve
# What `pip install -e .` needs: the project metadata and the four packages (no models: they change
# the image's last layer only, and never the dependencies); app/ imports imageprep/.
COPY pyproject.toml Makefile README.md LICENSE ./
COPY app/ app/
COPY training/ training/
COPY aeserve/ aeserve/
COPY imageprep/ imageprep/
# The pip cache lives in a BuildKit cache mount: rebuilds after a code change reuse the downloaded
# wheels, and the cache never enters an image layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    make install VENV=/opt/venv
# A version given must be the installed package's own (importlib.metadata), else the build stops. (Declared
# here, not above: a RUN after an ARG misses the cache when its value changes.)
ARG VERSION
RUN test "$VERSION" = unknown || test "$VERSION" = "$(/opt/venv/bin/python -c 'import app; print(app.__version__)')"

# --- runtime: slim Python, the venv, the sources and the models; no make, no pip cache, not root -------
FROM ${PYTHON_IMAGE}
ARG VERSION
LABEL org.opencontainers.image.title="aeserve" \
      org.opencontainers.image.description="MNIST and Fashion-MNIST autoencoders over REST" \
      org.opencontainers.image.version="${VERSION}" \
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
    AESERVE_RUNTIME=litert \
    WEB_CONCURRENCY=1 \
    UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN=8 \
    AESERVE_GRPC_SHUTDOWN_GRACE_S=1 \
    AESERVE_GRPC_HOST=0.0.0.0
USER 10001:10001
# 8000: HTTP (REST); 8081: the Open Inference Protocol over gRPC (AESERVE_GRPC_PORT)
EXPOSE 8000 8081
# Healthy means ready (GET /readyz: models verified, loaded and warmed up): an image that can never
# serve (a model that fails to load, AESERVE_RUNTIME=tensorflow without TensorFlow) turns unhealthy.
# Liveness alone is GET /healthz (Kubernetes probes both, deploy/k8s/).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# uvicorn reads WEB_CONCURRENCY for --workers and UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN for the seconds it lets
# requests in flight finish after SIGTERM (8, and 1 more for gRPC calls: inside `docker stop`'s default
# 10 s; Kubernetes gets 20, deploy/k8s/). AESERVE_RUNTIME is fixed: the image has LiteRT and no TensorFlow.
# app.serve is uvicorn's command line that exits 0 after a graceful stop.
CMD ["/opt/venv/bin/python", "-m", "app.serve", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
