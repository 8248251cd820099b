"""The optional API key: when ``AESERVE_API_KEY`` is set, every route but the health checks needs
``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_body

# Probes (Kubernetes, KServe, load balancers) carry no credentials.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


class ApiKey:
    """ASGI middleware: 401 with ``WWW-Authenticate: Bearer`` unless the request carries the key."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.expected = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((value for key, value in scope["headers"] if key == b"authorization"), b"")
        # The scheme is case-insensitive (RFC 9110, 11.1), with one or more spaces before the token.
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.lstrip(b" "), self.expected):
            await self.app(scope, receive, send)
            return
        message = "this service needs an API key: send Authorization: Bearer <key>"
        if given:
            message = "the API key is wrong (Authorization: Bearer <key>)"
        body = error_body(message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="aeserve"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
