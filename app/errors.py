"""Every error is JSON ``{"error": "..."}`` with the fitting status, and never a traceback."""

from __future__ import annotations

import logging
import reprlib

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("aeserve")


class ApiError(Exception):
    """An error a client can act on: ``status`` and a message in words."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxstring, _BRIEF.maxother = 2, 4, 4, 40, 40


def brief(value: object) -> str:
    """A client's value as an error message quotes it: short, and shallow however deeply it nests."""
    return _BRIEF.repr(value)


# The longest message an error body carries: whatever of a client's input a message quotes, only a
# short prefix of it comes back.
MAX_MESSAGE = 400


def error_body(message: str) -> bytes:
    """The one shape of every error body: ``{"error": message}``, the message cut to ``MAX_MESSAGE`` characters."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return orjson.dumps({"error": message})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error as a response of the FastAPI routes."""
    return Response(error_body(message), status, headers=headers, media_type="application/json")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = " ".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}".replace("query ", "query parameter "))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map client faults, unknown routes and unexpected faults to JSON errors."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the request was logged")
