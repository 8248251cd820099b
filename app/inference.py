"""The five inference endpoints, served as plain ASGI beside FastAPI.

``/encode``, ``/reconstruct``, ``/denoise``, ``/classify`` and ``/cluster`` are the hot
path: each request is read, checked, batched with its neighbours and answered here, by
one function per endpoint, without FastAPI's per-request middleware, routing, dependency
solving and response classes. :class:`app.main.Service` hands these paths to
:class:`InferenceApp` before FastAPI sees them. Their OpenAPI description is declared in
``app/routers/inference.py``; every other route is FastAPI's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import numpy as np
from starlette.types import Receive, Scope, Send

from app.decoding import DecodePool
from app.errors import ApiError, brief, error_body
from app.inputs import Limits, read_images_off_loop, whole_number
from app.preprocess import RULES
from app.registry import Registry, ServedModel
from app.responses import JSON, NPY, PNG, image_body, json_body, negotiate

log = logging.getLogger("aeserve")

PREPROCESS = RULES
MAX_SEED = 2**32 - 1
MAX_NOISE_STD = 2.0
MAX_VERSION = 2**31 - 1
# Sent with an answer given before the request body was read to its end: otherwise the server would
# keep the connection and read the rest of a body it has refused, and the client would send it all.
CLOSE = {"Connection": "close"}


class ClientGoneError(Exception):
    """The client closed the connection before its request body arrived."""


@dataclass(frozen=True)
class Params:
    """The query parameters of an inference request, checked."""

    dataset: str | None = None
    model: str | None = None
    version: int | None = None
    preprocess: str | None = None  # None: the model's own rule
    noise_std: float | None = None
    seed: int | None = None


def parse_params(query_string: bytes, denoise: bool = False) -> Params:
    """Check ``dataset``, ``model``, ``version``, ``preprocess`` (and ``noise_std``, ``seed`` on /denoise); 422
    when wrong."""
    query = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    preprocess = query.get("preprocess")
    if preprocess is not None and preprocess not in PREPROCESS:
        raise ApiError(422, f"query parameter preprocess: must be {', '.join(PREPROCESS)}, not {preprocess!r}")
    model, version = query.get("model") or None, None
    if "version" in query:
        version = _number(query, "version", int, 1, MAX_VERSION)
        if model is None:
            raise ApiError(422, "query parameter version: a version of the model named by model, and none is named")
    noise_std = seed = None
    if denoise and "noise_std" in query:
        noise_std = _number(query, "noise_std", float, 0.0, MAX_NOISE_STD)
    if denoise and "seed" in query:
        seed = _number(query, "seed", int, 0, MAX_SEED)
    return Params(query.get("dataset") or None, model, version, preprocess, noise_std, seed)


def _number(query: dict[str, str], name: str, kind: type, low: float, high: float):
    text = query[name]
    if kind is int:
        value = whole_number(text, int(high))
    else:  # ASCII as the integers are: float() would read "1_0" and other scripts' digits too
        try:
            value = float(text) if text.isascii() and "_" not in text else None
        except ValueError:
            value = None
    if value is None:
        what = "a whole number in ASCII digits" if kind is int else "a number"
        raise ApiError(422, f"query parameter {name}: {brief(text)} is not {what}")
    if not (low <= value <= high) or (isinstance(value, float) and not math.isfinite(value)):
        raise ApiError(422, f"query parameter {name}: must lie in {low:g}..{high:g}, not {brief(text)}")
    return value


Body = tuple[bytes, str]


async def encode(served: ServedModel, images: np.ndarray, media: str, _: Params) -> Body:
    codes = (await served.run(images, "encode"))["codes"]
    if media == NPY:
        return image_body(codes, NPY)
    payload = {"model": served.name, "version": served.version, "latent_dim": codes.shape[1], "codes": codes}
    return json_body(payload), JSON


async def reconstruct(served: ServedModel, images: np.ndarray, media: str, _: Params) -> Body:
    reconstruction = (await served.run(images, "reconstruct"))["reconstruction"]
    if media != JSON:
        return image_body(reconstruction, media)
    errors = np.mean((reconstruction - images).reshape(len(images), -1) ** 2, axis=1)
    payload = {
        "model": served.name,
        "version": served.version,
        "images": reconstruction,
        "errors": errors,
        "in_distribution": (errors <= served.threshold).tolist(),
    }
    return json_body(payload), JSON


async def denoise(served: ServedModel, images: np.ndarray, media: str, params: Params) -> Body:
    noisy = None
    if params.noise_std is not None:
        rng = np.random.default_rng(params.seed)
        noisy = np.clip(images + rng.normal(0.0, params.noise_std, images.shape), 0.0, 1.0).astype(np.float32)
        images = noisy
    denoised = (await served.run(images, "denoise"))["denoised"]
    if media != JSON:
        return image_body(denoised, media)
    payload = {"model": served.name, "version": served.version, "images": denoised}
    if noisy is not None:
        payload["noisy"] = noisy
    return json_body(payload), JSON


async def classify(served: ServedModel, images: np.ndarray, _: str, __: Params) -> Body:
    probabilities = (await served.run(images, "classify"))["probabilities"]
    labels = probabilities.argmax(axis=1)
    names = served.class_names
    predictions = [
        {"label": int(k), "class_name": names[k], "confidence": float(p[k]), "probabilities": p}
        for k, p in zip(labels, probabilities, strict=True)
    ]
    return json_body({"model": served.name, "version": served.version, "predictions": predictions}), JSON


async def cluster(served: ServedModel, images: np.ndarray, _: str, __: Params) -> Body:
    outputs = await served.run(images, "cluster")
    hints = served.label_hints
    # KMeans heads give the distance to each centre; mixture heads the probability of each component.
    if "distances" in outputs:
        key, scores = "distances", outputs["distances"]
    else:
        key, scores = "probabilities", outputs["cluster_probabilities"]
    assignments = [
        {"cluster": int(k), key: d, "label_hint": hints[int(k)] if int(k) < len(hints) else ""}
        for k, d in zip(outputs["cluster"], scores, strict=True)
    ]
    payload = {
        "model": served.name,
        "version": served.version,
        "n_clusters": scores.shape[1],
        "assignments": assignments,
    }
    return json_body(payload), JSON


Handler = Callable[[ServedModel, np.ndarray, str, Params], Awaitable[Body]]


@dataclass(frozen=True)
class Endpoint:
    """One inference route: its name, the response forms it offers and the function that answers it."""

    name: str
    offered: tuple[str, ...]
    answer: Handler


ENDPOINTS = {
    "/encode": Endpoint("encode", (JSON, NPY), encode),
    "/reconstruct": Endpoint("reconstruct", (JSON, NPY, PNG), reconstruct),
    "/denoise": Endpoint("denoise", (JSON, NPY, PNG), denoise),
    "/classify": Endpoint("classify", (JSON,), classify),
    "/cluster": Endpoint("cluster", (JSON,), cluster),
}


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` (while streaming, not after)."""
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"request body is {int(declared)} bytes; the limit is {limit}", CLOSE)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body passes the limit of {limit} bytes", CLOSE)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, media: str, headers: list[tuple[bytes, bytes]]) -> None:
    start = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Received:
    """Whether a request's body has been read to its end."""

    body: bool = False


def _unread(received: Received) -> dict[str, str]:
    return {} if received.body else CLOSE


class InferenceApp:
    """ASGI app that answers HTTP requests to the five inference paths (``POST``; 405 otherwise)."""

    def __init__(self, registry: Registry, limits: Limits, decoders: DecodePool | None = None):
        self.registry = registry
        self.limits = limits
        self.decoders = decoders or DecodePool()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS[scope["path"]]
        if scope["method"] != "POST":
            body = error_body(f"{scope['method']} is not allowed on {scope['path']}; use POST")
            await _send(send, 405, body, JSON, [(b"allow", b"POST")])
            return
        received = Received()
        try:
            served, (body, media) = await self._answer(endpoint, scope, receive, received)
            status = 200
            headers = [(b"x-model", served.name.encode()), (b"x-model-version", str(served.version).encode())]
        except ClientGoneError:
            return
        except ApiError as exc:
            status, body, media = exc.status, error_body(exc.message), JSON
            headers = [(k.lower().encode(), v.encode()) for k, v in ((exc.headers or {}) | _unread(received)).items()]
        except asyncio.CancelledError:
            # The server's graceful-shutdown time ran out with this request unanswered: say so, then stop.
            body = error_body("the server is shutting down; retry")
            with contextlib.suppress(Exception):
                await _send(send, 503, body, JSON, [(b"retry-after", b"1"), (b"connection", b"close")])
            raise
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            status, body, media, headers = 500, error_body("internal server error; the request was logged"), JSON, []
        await _send(send, status, body, media, headers)

    async def _answer(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, received: Received
    ) -> tuple[ServedModel, Body]:
        content_type = accept = length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"content-length":
                length = value
        params = parse_params(scope["query_string"], denoise=endpoint.name == "denoise")
        media = negotiate(accept, endpoint.offered)
        served = self.registry.resolve(endpoint.name, params.dataset, params.model, params.version)
        body = await read_body(receive, length, self.limits.max_body_bytes)
        received.body = True
        images = await read_images_off_loop(
            content_type or "", body, self.limits, params.preprocess or served.preprocess, self.decoders.run
        )
        return served, await endpoint.answer(served, images, media, params)
