"""The web page at ``/`` and its static files at ``/static`` (kept out of the OpenAPI schema)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The page: draw a digit or drop an image, see its code, reconstruction, denoised version, class and cluster."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``app/static/`` at ``/static`` on ``app``.

    A mount on an ``APIRouter`` is lost by ``include_router``, hence one function that adds both.
    """
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
