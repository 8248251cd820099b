"""The ASGI app: ``uvicorn app.main:app`` serves the committed ``models/`` with default settings."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.errors import install_error_handlers
from app.inputs import Limits
from app.registry import Registry
from app.routers import inference, operations, page
from app.settings import Settings

DESCRIPTION = """Trained MNIST and Fashion-MNIST autoencoders over REST.

Post images as `multipart/form-data` (parts named `file`), as JSON `{"images": [...], "pixel_scale": 1|255}`
or as the bytes of one `.npy` file (`application/x-npy`). Every error is JSON `{"error": "..."}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for ``settings`` (default: from ``AESERVE_*`` environment variables).

    Models load in a background thread after start-up: ``/healthz`` answers at once and
    ``/readyz`` is 503, with the reason, until every model is loaded and warmed up.
    """
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    registry = Registry(settings.models_dir, warmup=settings.warmup)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        loading = asyncio.get_running_loop().run_in_executor(None, registry.load_all)
        yield
        await loading

    app = FastAPI(title="aeserve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.limits = Limits(settings.max_body_bytes, settings.max_batch, settings.max_image_pixels)
    install_error_handlers(app)
    app.include_router(inference.router)
    app.include_router(operations.router)
    page.install(app)
    return app


app = create_app()
