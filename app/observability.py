"""Request ids, structured JSON logs and the per-request metrics, as the outermost ASGI middleware.

Every response carries ``X-Request-ID``: the client's own when it sent a sane one, else a new
one. Every log line the service writes while answering a request names that id, so a client's
report can be matched to the log.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from functools import lru_cache

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.inference import ENDPOINTS
from app.metrics import Metrics

log = logging.getLogger("aeserve.access")

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REQUEST_ID_HEADER = b"x-request-id"
# Echoing a client's id back into headers and logs: keep it short and free of anything odd.
SANE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Control characters a client can put in a logged value (a path's %0A) written as escapes, so that a
# plain-text line cannot be split into forged ones.
CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


@lru_cache(maxsize=4)
def _second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds, as ``datetime.isoformat(timespec="milliseconds")`` writes it."""
    second = int(created)
    micros = round((created - second) * 1e6)  # datetime's own rounding, then truncation to milliseconds
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    return f"{_second(second)}.{micros // 1000:03d}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the request id, and any ``fields`` given."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()  # the request being answered when the line is written
        if request_id is not None:
            entry["request_id"] = request_id
        entry |= getattr(record, "fields", {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """Plain lines (``TEXT_FORMAT``), one per record: control characters in the message are escaped.

    A traceback, which follows its line, keeps its own lines.
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return super().formatMessage(record).translate(CONTROLS)


FORMATTERS = {"json": JsonFormatter, "text": TextFormatter}


def uvicorn_log_config(form: str) -> dict:
    """uvicorn's own logging configuration, its lines written by the service's formatter (``json`` or ``text``).

    Given to uvicorn by :mod:`app.serve`, so that every process writes the same lines: the supervisor of
    several workers too, which never imports the app.
    """
    formatter = {"()": f"{FORMATTERS[form].__module__}.{FORMATTERS[form].__qualname__}"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def configure_logging(level: str, form: str, access_log: bool = True) -> None:
    """Send the service's logs (and uvicorn's, when it runs the app) to stderr as JSON lines or plain text.

    With ``access_log`` the service writes its own access lines (with their request ids), and
    uvicorn's, which would repeat them, are switched off.
    """
    # What the service's lines never show, no record collects (the logging HOWTO's "Optimization"
    # table): the calling frame, thread, process and multiprocessing names. About 4 µs per line.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    formatter = FORMATTERS[form]()
    logger = logging.getLogger("aeserve")
    logger.setLevel(level.upper())
    handler = next((h for h in logger.handlers if getattr(h, "aeserve", False)), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.aeserve = True
        logger.addHandler(handler)
    handler.setFormatter(formatter)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        for uvicorn_handler in logging.getLogger(name).handlers:
            uvicorn_handler.setFormatter(formatter)
    logging.getLogger("uvicorn.access").disabled = access_log


def route_label(scope: Scope) -> str:
    """The route template that answered (bounded, for metric labels), not the raw path."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    return scope["path"] if scope["path"] in ENDPOINTS else "unmatched"


class Observability:
    """ASGI middleware: request id in and out, the access log line and the metrics of every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: str = "errors"):
        """``access_log``: ``all`` (a line per request), ``errors`` (for 4xx and 5xx answers) or ``off``."""
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = (
            next(
                (v.decode() for k, v in scope["headers"] if k == REQUEST_ID_HEADER and SANE_ID.fullmatch(v)),
                None,
            )
            or os.urandom(16).hex()
        )
        token = REQUEST_ID.set(request_id)
        status, model = 499, ""  # 499: the client left before an answer started

        async def send_with_id(message: Message) -> None:
            nonlocal status, model
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                for key, value in headers:
                    if key == b"x-model":
                        model = value.decode("latin-1")
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        finally:
            seconds = time.perf_counter() - start
            route = route_label(scope)
            self.metrics.observe_request(scope["method"], route, model, status, seconds)
            if self.access_log == "all" or (self.access_log == "errors" and status >= 400):
                fields = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "model": model or None,
                    "duration_ms": round(seconds * 1000, 3),
                }
                log.info("%s %s %d", scope["method"], scope["path"], status, extra={"fields": fields})
            REQUEST_ID.reset(token)
