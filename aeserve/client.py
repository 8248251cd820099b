"""``Client`` and ``AsyncClient``: the five inference endpoints, ``/models``, ``/readyz`` and ``/healthz`` from Python.

Arrays travel as ``.npy`` (uint8 stays uint8, floats go as float32) and come back as ``.npy`` wherever the
endpoint answers with the whole result that way; image files travel as multipart parts named ``file``, so the
service's MNIST-style preprocessing applies. A batch larger than the service's limits (``GET /models``, read
once per client) is sent as several requests and the answers joined; the requests after the first name the
model and version that answered it, so every row comes from the same model.

Both clients share one request plan: :meth:`_Base._infer` is a generator that yields each request and receives
its response, and each client runs it with its own I/O (blocking or ``async``).
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import math
import mimetypes
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aeserve.results import (
    ClassifyResult,
    ClusterResult,
    DenoiseResult,
    EncodeResult,
    ReconstructResult,
    Result,
    join,
)

DEFAULT_URL = "http://127.0.0.1:8000"
JSON, NPY = "application/json", "application/x-npy"
# What one request body carries besides its images: the header numpy.save writes (128 bytes for these shapes),
# or a multipart part's boundary and headers, with room to spare.
NPY_HEADER_BYTES = 256
PART_OVERHEAD_BYTES = 512
# A Retry-After beyond this is waited for this long only.
MAX_RETRY_DELAY = 30.0

ImageFile = str | os.PathLike | bytes
Images = np.ndarray | ImageFile | Sequence[ImageFile] | Sequence[np.ndarray]
Progress = Callable[[int, int], None]


class ApiError(Exception):
    """An answer of the service other than success: ``status`` and the service's own ``message``."""

    def __init__(self, status: int, message: str, response: httpx.Response | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.response = response


@dataclass(frozen=True)
class Limits:
    """The service's request limits, as ``GET /models`` gives them."""

    max_batch: int
    max_body_bytes: int
    max_image_pixels: int


# A service that does not publish its limits has its documented defaults.
DEFAULT_LIMITS = Limits(max_batch=1024, max_body_bytes=16 * 2**20, max_image_pixels=16_000_000)


@dataclass
class _Call:
    """One HTTP request of a plan. ``probe``: answered as it is (no retry, no error raised)."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list | None = None
    probe: bool = False


@dataclass
class _Chunk:
    """The images of one request: an array (sent as ``.npy``) or files (sent as multipart), with their indices."""

    count: int
    array: np.ndarray | None = None
    files: list | None = None


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _image_count(shape: tuple[int, ...]) -> int | None:
    """Images in an array of ``shape`` in one of the service's accepted shapes, else ``None``."""
    if shape == (28, 28):
        return 1
    if (len(shape) == 3 and shape[1:] == (28, 28)) or (len(shape) == 4 and shape[1:] == (28, 28, 1)):
        return shape[0]
    if len(shape) == 2 and shape[1] == 784:
        return shape[0]
    return None


def _is_file(item: object) -> bool:
    return isinstance(item, str | bytes | bytearray | os.PathLike)


def _file_part(item: ImageFile, index: int) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(item, bytes | bytearray):
        name, data = f"image{index}", bytes(item)
    else:
        path = Path(item)
        name, data = path.name, path.read_bytes()
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return ("file", (name, data, kind))


def _chunks(images: Images, limits: Limits) -> list[_Chunk]:
    """``images`` cut into request bodies within ``limits`` (an array the service would refuse goes whole, so
    that the service's own message says why)."""
    if _is_file(images):
        images = [images]
    if isinstance(images, Sequence) and images and all(_is_file(item) for item in images):
        return _file_chunks(list(images), limits)
    if isinstance(images, Sequence) and images and all(isinstance(item, np.ndarray) for item in images):
        images = np.stack(images)
    if isinstance(images, Sequence) and not images:
        raise ValueError("no images given")
    if isinstance(images, Sequence) and any(_is_file(item) or isinstance(item, np.ndarray) for item in images):
        raise TypeError("images: an array, image files (paths or bytes), or a list of either kind, not of both")
    array = np.asarray(images)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        array = array.astype(np.float32)  # the service computes in float32: the same numbers, half the bytes
    count = _image_count(array.shape)
    if count is None or count == 0:
        return [_Chunk(1, array=array)]
    array = array.reshape(count, 28, 28)
    by_bytes = max(1, (limits.max_body_bytes - NPY_HEADER_BYTES) // (784 * array.dtype.itemsize))
    size = max(1, min(limits.max_batch, by_bytes))
    return [_Chunk(len(part), array=part) for part in (array[i : i + size] for i in range(0, count, size))]


def _file_size(item: ImageFile) -> int:
    return len(item) if isinstance(item, bytes | bytearray) else Path(item).stat().st_size


def _file_chunks(items: list[ImageFile], limits: Limits) -> list[_Chunk]:
    """Files grouped into requests within ``limits``; each file is read when its request is sent."""
    budget = limits.max_body_bytes - PART_OVERHEAD_BYTES
    chunks: list[_Chunk] = []
    current: list = []
    size = 0
    for index, item in enumerate(items):
        part_size = _file_size(item) + PART_OVERHEAD_BYTES
        if current and (len(current) >= limits.max_batch or size + part_size > budget):
            chunks.append(_Chunk(len(current), files=current))
            current, size = [], 0
        current.append((item, index))
        size += part_size
    chunks.append(_Chunk(len(current), files=current))
    return chunks


def _query(**params: Any) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def _retry_delay(response: httpx.Response) -> float | None:
    """Seconds to wait before asking again: a 503 with ``Retry-After`` (seconds or an HTTP date), else ``None``."""
    if response.status_code != 503 or "retry-after" not in response.headers:
        return None
    value = response.headers["retry-after"].strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_DELAY)


def _check(response: httpx.Response) -> httpx.Response:
    """The response when it is a success; else :class:`ApiError` with the service's message."""
    if response.is_success:
        return response
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    raise ApiError(response.status_code, str(message), response)


def _array(values: Any, dtype: type = np.float32) -> np.ndarray:
    return np.asarray(values, dtype=dtype)


def _npy_answer(response: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def _is_npy(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith(NPY)


def _model(response: httpx.Response) -> tuple[str, int]:
    return response.headers["x-model"], int(response.headers["x-model-version"])


def _parse(endpoint: str, response: httpx.Response) -> Result:
    """One answer of ``endpoint`` (JSON, or ``.npy`` with the model in ``X-Model`` and ``X-Model-Version``)."""
    if _is_npy(response):
        name, version = _model(response)
        array = _npy_answer(response)
        return EncodeResult(name, version, array) if endpoint == "encode" else DenoiseResult(name, version, array)
    payload = response.json()
    name, version = payload["model"], int(payload["version"])
    if endpoint == "encode":
        return EncodeResult(name, version, _array(payload["codes"]))
    if endpoint == "reconstruct":
        images, errors = _array(payload["images"]), _array(payload["errors"])
        return ReconstructResult(name, version, images, errors, _array(payload["in_distribution"], bool))
    if endpoint == "denoise":
        noisy = _array(payload["noisy"]) if "noisy" in payload else None
        return DenoiseResult(name, version, _array(payload["images"]), noisy)
    if endpoint == "classify":
        predictions = payload["predictions"]
        return ClassifyResult(
            name,
            version,
            _array([p["label"] for p in predictions], np.int64),
            [p["class_name"] for p in predictions],
            _array([p["confidence"] for p in predictions]),
            _array([p["probabilities"] for p in predictions]),
        )
    if endpoint == "cluster":
        assignments = payload["assignments"]
        kind = "distances" if assignments and "distances" in assignments[0] else "probabilities"
        return ClusterResult(
            name,
            version,
            _array([a["cluster"] for a in assignments], np.int64),
            _array([a[kind] for a in assignments]),
            kind,
            [a["label_hint"] for a in assignments],
        )
    raise ValueError(f"unknown endpoint {endpoint}")


def _limits(listing: dict) -> Limits:
    given = listing.get("limits") or {}
    return Limits(**{key: int(given.get(key, getattr(DEFAULT_LIMITS, key))) for key in Limits.__dataclass_fields__})


Plan = Generator[_Call, httpx.Response, Any]


class _Base:
    """The settings and request plans both clients share."""

    def __init__(
        self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0, retries: int = 3
    ):
        from aeserve import __version__

        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.timeout = timeout
        self.headers = {"User-Agent": f"aeserve-client/{__version__}"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._limits: Limits | None = None

    def _listing(self) -> Plan:
        response = yield _Call("GET", "/models")
        listing = response.json()
        self._limits = _limits(listing)
        return listing

    def _limits_plan(self) -> Plan:
        if self._limits is None:
            yield from self._listing()
        return self._limits

    def _probe(self, path: str) -> Plan:
        response = yield _Call("GET", path, probe=True)
        if response.status_code == 503:
            return False
        _check(response)
        return True

    def _infer(self, endpoint: str, images: Images, query: dict[str, Any], progress: Progress | None) -> Plan:
        limits = yield from self._limits_plan()
        chunks = _chunks(images, limits)
        total = sum(chunk.count for chunk in chunks)
        # /reconstruct's errors and /denoise's noisy input come only in JSON; /classify and /cluster answer only JSON
        npy = endpoint == "encode" or (endpoint == "denoise" and query.get("noise_std") is None)
        headers = {"Accept": NPY if npy else JSON}
        parts, done = [], 0
        for chunk in chunks:
            if chunk.array is not None:
                content = _npy(chunk.array)
                call = _Call("POST", f"/{endpoint}", query, headers | {"Content-Type": NPY}, content=content)
            else:
                uploads = [_file_part(item, index) for item, index in chunk.files]
                call = _Call("POST", f"/{endpoint}", query, headers, files=uploads)
            parts.append(_parse(endpoint, (yield call)))
            query = query | {"model": parts[0].model, "version": parts[0].version}
            done += chunk.count
            if progress is not None:
                progress(done, total)
        return join(parts)


class Client(_Base):
    """A blocking client of the service; use it as a context manager (or call :meth:`close`).

    ``retries``: how many times a 503 with ``Retry-After`` is asked again (after the time it names, at most
    30 s); any other 4xx or 5xx raises :class:`ApiError` with the service's message.
    """

    def __init__(
        self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0, retries: int = 3
    ):
        super().__init__(base_url, api_key, timeout, retries)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.http.close()

    def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            response = self.http.request(
                call.method,
                call.path,
                params=call.params,
                headers=call.headers,
                content=call.content,
                files=call.files,
            )
            if call.probe:
                return response
            delay = _retry_delay(response)
            if delay is None or attempt >= self.retries:
                return _check(response)
            attempt += 1
            time.sleep(delay)

    def _run(self, plan: Plan) -> Any:
        try:
            call = next(plan)
            while True:
                call = plan.send(self._send(call))
        except StopIteration as stop:
            return stop.value

    def limits(self) -> Limits:
        """The service's request limits (read from ``GET /models`` once, then kept)."""
        return self._run(self._limits_plan())

    def models(self) -> dict:
        """``GET /models``: every model with its status and manifest summary, the defaults and the limits."""
        return self._run(self._listing())

    def ready(self) -> bool:
        """Whether every model is loaded and warmed up (``GET /readyz``)."""
        return self._run(self._probe("/readyz"))

    def health(self) -> bool:
        """Whether the service answers (``GET /healthz``)."""
        return self._run(self._probe("/healthz"))

    def encode(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> EncodeResult:
        """The latent code of each image.

        ``images``: an array (``[28,28]`` or ``[N,28,28]``, uint8 0..255 or float 0..1), or image files (a
        path, the bytes of a file, or a list of them). ``dataset``, ``model``, ``version``, ``preprocess``
        (image files only: ``mnist`` or ``none``) are the endpoint's query parameters. ``progress(done, total)``
        is called after each request.
        """
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return self._run(self._infer("encode", images, query, progress))

    def reconstruct(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> ReconstructResult:
        """Each image decoded from its code, its mean squared error and whether it is in distribution
        (arguments as :meth:`encode`)."""
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return self._run(self._infer("reconstruct", images, query, progress))

    def denoise(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        noise_std: float | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> DenoiseResult:
        """Each image with its noise removed; ``noise_std`` (and ``seed``) add Gaussian noise on the service first,
        and ``noisy`` holds that input (a batch sent as several requests gets the seed in each)."""
        query = _query(
            dataset=dataset, model=model, version=version, preprocess=preprocess, noise_std=noise_std, seed=seed
        )
        return self._run(self._infer("denoise", images, query, progress))

    def classify(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> ClassifyResult:
        """The class of each image, its name, confidence and every class's probability (arguments as
        :meth:`encode`)."""
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return self._run(self._infer("classify", images, query, progress))

    def cluster(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> ClusterResult:
        """The cluster of each image, its scores and label hint (arguments as :meth:`encode`)."""
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return self._run(self._infer("cluster", images, query, progress))


class AsyncClient(_Base):
    """The ``async`` twin of :class:`Client`: the same methods, as coroutines; safe to share between tasks."""

    def __init__(
        self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0, retries: int = 3
    ):
        super().__init__(base_url, api_key, timeout, retries)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        attempt = 0
        while True:
            response = await self.http.request(
                call.method,
                call.path,
                params=call.params,
                headers=call.headers,
                content=call.content,
                files=call.files,
            )
            if call.probe:
                return response
            delay = _retry_delay(response)
            if delay is None or attempt >= self.retries:
                return _check(response)
            attempt += 1
            await asyncio.sleep(delay)

    async def _run(self, plan: Plan) -> Any:
        try:
            call = next(plan)
            while True:
                call = plan.send(await self._send(call))
        except StopIteration as stop:
            return stop.value

    async def limits(self) -> Limits:
        """The service's request limits (read from ``GET /models`` once, then kept)."""
        return await self._run(self._limits_plan())

    async def models(self) -> dict:
        """``GET /models``: every model with its status and manifest summary, the defaults and the limits."""
        return await self._run(self._listing())

    async def ready(self) -> bool:
        """Whether every model is loaded and warmed up (``GET /readyz``)."""
        return await self._run(self._probe("/readyz"))

    async def health(self) -> bool:
        """Whether the service answers (``GET /healthz``)."""
        return await self._run(self._probe("/healthz"))

    async def encode(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> EncodeResult:
        """:meth:`Client.encode`, awaited."""
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return await self._run(self._infer("encode", images, query, progress))

    async def reconstruct(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> ReconstructResult:
        """:meth:`Client.reconstruct`, awaited."""
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return await self._run(self._infer("reconstruct", images, query, progress))

    async def denoise(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        noise_std: float | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> DenoiseResult:
        """:meth:`Client.denoise`, awaited."""
        query = _query(
            dataset=dataset, model=model, version=version, preprocess=preprocess, noise_std=noise_std, seed=seed
        )
        return await self._run(self._infer("denoise", images, query, progress))

    async def classify(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> ClassifyResult:
        """:meth:`Client.classify`, awaited."""
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return await self._run(self._infer("classify", images, query, progress))

    async def cluster(
        self,
        images: Images,
        *,
        dataset: str | None = None,
        model: str | None = None,
        version: int | None = None,
        preprocess: str | None = None,
        progress: Progress | None = None,
    ) -> ClusterResult:
        """:meth:`Client.cluster`, awaited."""
        query = _query(dataset=dataset, model=model, version=version, preprocess=preprocess)
        return await self._run(self._infer("cluster", images, query, progress))


__all__ = ["DEFAULT_URL", "ApiError", "AsyncClient", "Client", "Limits"]
