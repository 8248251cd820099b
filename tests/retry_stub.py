"""A tiny ASGI app for the client's retry tests: ``POST /classify?model=KIND-N`` answers 503 the first N
times it is asked for that model name, then 200.

The 503 carries ``Retry-After``, as the service's answer while its models load does: ``0`` for KIND
``busy``, ``1`` for ``slow``, an HTTP date in the past for ``date``, and no header for ``bare``.
``GET /asked?model=...`` counts the requests each name got.
Run by ``scripts/local_server.start("retry_stub:app", "--app-dir", "tests")``.
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import parse_qsl

asked: Counter[str] = Counter()
RETRY_AFTER = {"busy": b"0", "slow": b"1", "date": b"Wed, 21 Oct 2015 07:28:00 GMT", "bare": None}


async def _send(send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    query = dict(parse_qsl(scope["query_string"].decode()))
    more = True
    while more:  # read the request body to its end
        message = await receive()
        more = message.get("more_body", False)
    if scope["path"] == "/readyz":
        await _send(send, 200, {"status": "ready"})
    elif scope["path"] == "/models":
        await _send(send, 200, {"models": [], "defaults": {}})
    elif scope["path"] == "/asked":
        await _send(send, 200, {"asked": asked[query["model"]]})
    elif scope["path"] == "/classify":
        name = query["model"]
        asked[name] += 1
        if asked[name] <= int(name.rsplit("-", 1)[1]):
            retry_after = RETRY_AFTER[name.split("-", 1)[0]]
            headers = [] if retry_after is None else [(b"retry-after", retry_after)]
            await _send(send, 503, {"error": "models are still loading"}, headers)
        else:
            prediction = {"label": 3, "class_name": "3", "confidence": 1.0, "probabilities": [0.0] * 3 + [1.0]}
            await _send(send, 200, {"model": name, "version": 1, "predictions": [prediction]})
    else:
        await _send(send, 404, {"error": f"no route {scope['path']}"})
