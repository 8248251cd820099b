"""The ASGI app: ``uvicorn app.main:app`` serves the committed ``models/`` with default settings."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.batching import BatchConfig
from app.decoding import DecodePool
from app.edge import BodyLimits
from app.errors import install_error_handlers
from app.inference import ENDPOINTS, InferenceApp
from app.inputs import Limits
from app.metrics import Metrics
from app.observability import Observability, configure_logging
from app.protocols import tfserving, v2
from app.registry import Registry
from app.routers import docs, operations, page
from app.routers import inference as declarations
from app.security import ApiKey
from app.settings import Settings
from app.workers import Worker

DESCRIPTION = """Trained MNIST and Fashion-MNIST autoencoders over REST.

Post images as `multipart/form-data` (parts named `file`), as JSON `{"images": [...], "pixel_scale": 1|255}`
or as the bytes of one `.npy` file (`application/x-npy`). Every error is JSON `{"error": "..."}`.
"""


def has_models(models_dir: Path) -> bool:
    """Whether ``models_dir`` holds at least one ``<name>/<version>/`` folder."""
    return models_dir.is_dir() and any(p.is_dir() and p.name.isdigit() for p in models_dir.glob("*/*"))


class Service(FastAPI):
    """FastAPI, with HTTP requests to the inference paths handed to ``inference`` ahead of its own stack.

    ``inference`` is :class:`InferenceApp` inside the same middleware as every other route (request
    ids, metrics and logs, CORS, the API key), but without FastAPI's own per-request layers.
    """

    inference: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.inference is not None and scope["type"] == "http" and scope["path"] in ENDPOINTS:
            await self.inference(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Service:
    """Build the service for ``settings`` (default: from ``AESERVE_*`` environment variables).

    Models load in a background thread after start-up: ``/healthz`` answers at once and
    ``/readyz`` is 503, with the reason, until every model is loaded and warmed up.
    """
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format, settings.access_log != "off")
    batching = (
        BatchConfig(
            settings.batch_max_size,
            settings.batch_max_delay_us,
            settings.batch_max_queue_images,
            settings.batch_inline_max_us,
            settings.queue_deadline_ms,
        )
        if settings.batching
        else None
    )
    registry = Registry(
        settings.models_dir,
        runtime=settings.runtime,
        model_threads=settings.model_threads,
        warmup=settings.warmup,
        batching=batching,
    )
    worker = Worker.from_environment()  # None when this process is the whole service
    metrics = Metrics(registry, worker.directory if worker else None)
    registry.on_batch = metrics.observe_batch

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if settings.require_models and not has_models(settings.models_dir):
            raise RuntimeError(
                f"AESERVE_MODELS_DIR={settings.models_dir} holds no <name>/<version>/ models "
                "and AESERVE_REQUIRE_MODELS is set"
            )
        grpc_server = None
        if settings.grpc_port:
            # imported here: its protobuf messages enter protobuf's process-wide pool only when served
            from app.protocols import grpc_v2

            grpc_server = await grpc_v2.start(app)
        loading = asyncio.get_running_loop().run_in_executor(None, registry.load_all)
        if worker is not None:
            loading.add_done_callback(lambda _: worker.mark_ready(registry.ready))
        yield
        if grpc_server is not None:
            await grpc_server.stop(settings.grpc_shutdown_grace_s)
        await loading
        if worker is not None:
            worker.mark_ready(False)
        decoders.close()

    app = Service(
        title="aeserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc without a CDN: app.routers.docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.worker = worker
    app.state.limits = limits = Limits(
        settings.max_body_bytes,
        settings.max_batch,
        settings.max_image_pixels,
        settings.max_request_pixels,
        settings.max_image_scans,
        settings.decode_cpu_ms,
    )
    app.state.decoders = decoders = DecodePool(
        settings.decode_pool, settings.decode_workers, settings.queue_deadline_ms / 1000
    )
    install_error_handlers(app)
    app.include_router(operations.router)
    app.include_router(tfserving.router)
    app.include_router(v2.router)
    # Innermost first; the last, outermost, sees every answer: request ids and metrics. CORS answers
    # preflights before the key is asked; BodyLimits refuses what no route should read.
    middleware: list[tuple[type, dict]] = []
    if settings.api_key is not None and settings.api_key.get_secret_value():
        middleware.append((ApiKey, {"key": settings.api_key.get_secret_value()}))
    if settings.cors_origins:
        cors = {
            "allow_origins": settings.cors_origins,
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Authorization", "Content-Type", "Accept", "X-Request-ID"],
            "expose_headers": ["X-Model", "X-Model-Version", "X-Request-ID", "Retry-After"],
        }
        middleware.append((CORSMiddleware, cors))
    middleware.append(
        (BodyLimits, {"max_in_flight": settings.max_body_bytes_in_flight, "max_body_bytes": settings.max_body_bytes})
    )
    middleware.append((Observability, {"metrics": metrics, "access_log": settings.access_log}))
    inference: ASGIApp = InferenceApp(registry, limits, decoders)
    for cls, options in middleware:
        app.add_middleware(cls, **options)
        inference = cls(inference, **options)
    app.inference = inference

    def openapi() -> dict:
        if app.openapi_schema is None:
            routes = [*declarations.router.routes, *app.routes]
            app.openapi_schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=routes
            )
        return app.openapi_schema

    app.openapi = openapi
    page.install(app)
    docs.install(app)
    return app


app = create_app()
