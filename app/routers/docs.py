"""The interactive API documentation, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with every file they load
served by the service itself: no CDN, so the pages work where there is no internet.

Swagger UI's and ReDoc's files come from the ``fastapi-offline`` package (its ``static/`` folder), mounted at
``/docs-assets``; the pages are FastAPI's own (``get_swagger_ui_html``, ``get_redoc_html``) pointed at them,
as FastAPI's "Custom Docs UI Static Assets" recipe does. Like every route, they need the API key when one is set.

ReDoc's bundle fetches the Redocly logo of its sidebar's "API docs by Redocly" link from Redocly's CDN, with
no option to turn it off: the service serves the bundle with that one address replaced by an empty image.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
ASSETS_URL = "/docs-assets"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
# A transparent 1x1 GIF: the logo's <img> stays, empty, and nothing leaves the service.
EMPTY_IMAGE = b"data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def _root(request: Request) -> str:
    """The prefix the service is mounted under behind a proxy (``--root-path``), as FastAPI's own docs use it."""
    return request.scope.get("root_path", "").rstrip("/")


async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: every operation, with "Try it out"."""
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=root + request.app.swagger_ui_oauth2_redirect_url,
    )


async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """The page Swagger UI's OAuth2 flow returns to (FastAPI's own)."""
    return get_swagger_ui_oauth2_redirect_html()


async def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the same OpenAPI document as one reading page."""
    root = _root(request)
    return get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )


@cache
def _redoc_bundle() -> bytes:
    return (ASSETS_DIR / "redoc.standalone.js").read_bytes().replace(REDOCLY_LOGO, EMPTY_IMAGE)


async def redoc_bundle() -> Response:
    """``redoc.standalone.js`` without its one address outside the service."""
    return Response(_redoc_bundle(), media_type="text/javascript; charset=utf-8")


def install(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc``, Swagger UI's OAuth2 redirect page (at FastAPI's
    ``swagger_ui_oauth2_redirect_url``) and their files on ``app``, made with ``docs_url=None, redoc_url=None``."""
    app.add_api_route(DOCS_URL, swagger_ui, include_in_schema=False)
    app.add_api_route(app.swagger_ui_oauth2_redirect_url, swagger_ui_oauth2_redirect, include_in_schema=False)
    app.add_api_route(REDOC_URL, redoc, include_in_schema=False)
    # ahead of the mount, which would serve the file as it is
    app.add_api_route(f"{ASSETS_URL}/redoc.standalone.js", redoc_bundle, include_in_schema=False)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
