"""Limits at the edge: what one connection, and all requests together, may hold of the server.

uvicorn offers ``limit_concurrency`` (503 once that many connections or requests are open) and a
keep-alive timeout between requests; :mod:`app.serve` sets the first from ``AESERVE_MAX_CONNECTIONS``.
Its default HTTP implementation with ``uvicorn[standard]``, httptools, has no limit on the size of a
request head and no timeout on a head or a body in progress, and its h11 implementation answers an
oversized head with 400 and has no timeouts either. :class:`EdgeProtocol` is therefore uvicorn's
httptools protocol with what it lacks (``app.serve`` selects it):

- a head (request line and headers) larger than ``max_head_bytes`` gets 431 before the parser copies it;
- a head not complete ``head_timeout_s`` after the connection opened (or the previous request ended)
  closes the connection; a body that stalls ``body_timeout_s`` gets 408 and the connection closed;
- an answer that waits ``send_timeout_s`` for a client that stopped reading is dropped with its buffer;
- a request refused by ``limit_concurrency`` gets a JSON 503 with ``Retry-After``, and the health checks
  are answered all the same.

:class:`BodyLimits` is ASGI middleware, for any server: 415 for a ``Content-Encoding`` other than
identity, and a bound on the request body bytes held by all requests in progress together (503 with
``Retry-After`` beyond it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.errors import brief, error_body
from app.settings import Settings

# Probes carry no load of their own: they are answered even when the connection limit is reached.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
RETRY_AFTER = b"1"


@dataclass(frozen=True)
class EdgeLimits:
    """The per-connection limits of :class:`EdgeProtocol` (seconds and bytes)."""

    max_head_bytes: int
    head_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        """The limits ``settings`` hold."""
        return cls(settings.max_head_bytes, settings.head_timeout_s, settings.body_timeout_s, settings.send_timeout_s)


@lru_cache(maxsize=1)
def edge_limits() -> EdgeLimits:
    """The limits of this process's ``AESERVE_*`` settings, read once."""
    return EdgeLimits.from_settings(Settings())


def raw_response(status: bytes, message: str, headers: tuple[bytes, ...] = ()) -> bytes:
    """A whole JSON error answer, as bytes for the transport, that closes the connection."""
    body = error_body(message)
    head = [
        b"HTTP/1.1 " + status,
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to a request beyond ``limit_concurrency``: 503, JSON, ``Retry-After``."""
    body = error_body("the server has too many connections open; retry")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", RETRY_AFTER),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit and head, body and send timeouts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = edge_limits()
        self.in_head = True  # between a request's end (or the connection's start) and its head's end
        self.head_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.body_seen = 0.0  # loop time of the body's last bytes
        self.send_timer: asyncio.TimerHandle | None = None

    # --- the connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self.head_timer, self.body_timer, self.send_timer):
            if timer is not None:
                timer.cancel()
        self.head_timer = self.body_timer = self.send_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The head is counted before the parser sees it: httptools would copy a long header value again
        # with every piece of it that arrives.
        while data and not self.transport.is_closing():
            if self.in_head:
                room = self.limits.max_head_bytes - self.head_bytes
                piece, data = (data, b"") if len(data) <= room else (data[:room], data[room:])
                self.head_bytes += len(piece)
            else:
                piece, data = data, b""
                self.body_seen = self.loop.time()
            super().data_received(piece)
            if self.in_head and self.head_bytes >= self.limits.max_head_bytes and not self.transport.is_closing():
                self._refuse(b"431 Request Header Fields Too Large", "the request head is too large")
                return

    # --- parser callbacks -----------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._cancel_head()
        self.body_seen = self.loop.time()
        self.body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        super().on_message_complete()
        self._start_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.in_head and not self.transport.is_closing():
            # the next head's time runs from this answer's end, not from the request's
            self._cancel_head()
            self.head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timeout)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if app is service_unavailable:
            app = self.app if cycle.scope["path"] in PROBE_PATHS else too_many_connections
        super()._start_asgi_task(cycle, app)

    # --- writing --------------------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_timer is None:
            self.send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None

    # --- the limits -----------------------------------------------------------------------------------

    def _start_head(self) -> None:
        self.in_head, self.head_bytes = True, 0
        self._cancel_head()
        self.head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timeout)

    def _cancel_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _refuse(self, status: bytes, message: str) -> None:
        """Answer ``status`` (unless an answer is under way on this connection) and close it."""
        if self.cycle is not None and not self.cycle.response_complete:
            if not self.cycle.response_started:
                self.transport.write(raw_response(status, message))
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        elif not self.pipeline:
            self.transport.write(raw_response(status, message))
        self.transport.close()

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.in_head:
            return
        if self._answering() or self.pipeline:
            # The previous request is still being answered: its answer, not this client, is what we wait for.
            self.head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timeout)
            return
        if self.head_bytes:
            self.logger.info("closing a connection whose request head took over %g s", self.limits.head_timeout_s)
            self.transport.write(raw_response(b"408 Request Timeout", "the request head took too long"))
        self.transport.close()

    def _body_timeout(self) -> None:
        self.body_timer = None
        if self.transport.is_closing() or self.in_head:
            return
        waited = self.loop.time() - self.body_seen
        ours = self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)
        if ours or waited < self.limits.body_timeout_s:
            # Reading is paused by the server itself, or bytes came since the timer was set.
            delay = self.limits.body_timeout_s - (0.0 if ours else waited)
            if ours:
                self.body_seen = self.loop.time()
            self.body_timer = self.loop.call_later(delay, self._body_timeout)
            return
        self.logger.info("closing a connection whose request body stalled for %g s", self.limits.body_timeout_s)
        self._refuse(b"408 Request Timeout", "the request body stalled")

    def _send_timeout(self) -> None:
        self.send_timer = None
        if self.flow.write_paused:
            self.logger.info("dropping an answer its client has not read for %g s", self.limits.send_timeout_s)
            self.transport.abort()


class BodyLimits:
    """ASGI middleware: 415 for a ``Content-Encoding`` other than identity; the request body bytes that all
    requests in progress hold together kept under ``max_in_flight`` (503 with ``Retry-After`` beyond)."""

    def __init__(self, app: ASGIApp, max_in_flight: int, max_body_bytes: int):
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_body_bytes = max_body_bytes
        self.held = 0  # body bytes received by the requests in progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coding, declared = b"", 0
        for key, value in scope["headers"]:
            if key == b"content-encoding":
                coding += b"," + value
            elif key == b"content-length" and value.isdigit() and len(value) < 20:
                declared = min(int(value), self.max_body_bytes)
        codings = [c.strip().lower() for c in coding.split(b",") if c.strip()]
        if any(c != b"identity" for c in codings):
            named = brief(coding.lstrip(b",").decode("latin-1"))
            message = f"Content-Encoding {named} is not accepted; send the body uncompressed (identity)"
            await _answer(send, 415, message, [(b"accept-encoding", b"identity")])
            return
        if declared and self.held + declared > self.max_in_flight:
            await _answer(send, 503, "the server holds too many request bodies; retry", [(b"retry-after", RETRY_AFTER)])
            return
        mine, refused = 0, False

        async def counted() -> Message:
            nonlocal mine, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                mine += size
                self.held += size
                if self.held > self.max_in_flight:
                    refused = True
                    message_503 = "the server holds too many request bodies; retry"
                    await _answer(send, 503, message_503, [(b"retry-after", RETRY_AFTER)])
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        finally:
            self.held -= mine


async def _answer(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    """A JSON error sent before the request body was read: the connection closes after it."""
    body = error_body(message)
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})
