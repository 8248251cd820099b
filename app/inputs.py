"""The one input path of all five endpoints: multipart images, JSON or ``.npy`` → ``float32 [N,28,28]`` in 0..1."""

from __future__ import annotations

import io
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import chain

import numpy as np
import orjson
from python_multipart.multipart import parse_options_header

from app.errors import ApiError, brief
from app.imaging import MAX_SCANS, decode_image, open_image
from app.preprocess import DEFAULT_RULE, prepare

NPY_MAGIC = b"\x93NUMPY"
MEDIA_TYPES = ("multipart/form-data", "application/json", "application/x-npy")
# Form fields (parts without a filename) a multipart body may carry besides its files.
MAX_FORM_FIELDS = 16
# the five endpoints' query parameters: a form field of one of these names would be silently lost
QUERY_PARAMETERS = frozenset({"dataset", "model", "version", "preprocess", "noise_std", "seed"})


@dataclass(frozen=True)
class Limits:
    """The limits checked before any heavy work."""

    max_body_bytes: int
    max_batch: int
    max_image_pixels: int
    max_request_pixels: int = 64_000_000
    max_image_scans: int = MAX_SCANS
    decode_cpu_ms: int = 2000


def whole_number(text: str, high: int) -> int | None:
    """``text`` as a whole number in ASCII digits (leading zeros allowed), or ``None`` for anything else: a sign,
    spaces, ``_`` and other scripts' digits (``"١"``, ``"²"``) are no whole number here, in a path or a query.

    A number above ``high`` is returned as ``high + 1``, read from its length first: ``int`` refuses strings of
    over 4,300 digits, and would spend time on long ones. The one parser of versions and seeds.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return high + 1
    return min(int(digits), high + 1)


def check_batch(batch: np.ndarray, limits: Limits, scale: float = 1.0) -> np.ndarray:
    """Validate count, finiteness and range; return float32 in 0..1."""
    if len(batch) == 0:
        raise ApiError(422, "no images: send at least one")
    if len(batch) > limits.max_batch:
        raise ApiError(413, f"{len(batch)} images in one request; the limit is {limits.max_batch}")
    if batch.dtype == np.uint8 and scale == 255.0:  # in range by construction
        return np.divide(batch, np.float32(scale), dtype=np.float32)
    low, high = float(batch.min()), float(batch.max())  # NaN anywhere makes both NaN
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ApiError(422, "images hold NaN or infinite values")
    if low < 0 or high > scale:
        raise ApiError(422, f"pixel values must lie in 0..{scale:g}; got {low:g}..{high:g}")
    if scale != 1.0:
        return np.divide(batch, np.float32(scale), dtype=np.float32)
    return batch.astype(np.float32, copy=False)


def image_count(shape: tuple[int, ...], what: str) -> int:
    """Images in an array of ``shape``: ``(28,28)``, ``(N,28,28)``, ``(N,28,28,1)`` or ``(N,784)``; else 422."""
    if shape == (28, 28):
        return 1
    if (len(shape) == 3 and shape[1:] == (28, 28)) or (len(shape) == 4 and shape[1:] == (28, 28, 1)):
        return shape[0]
    if len(shape) == 2 and shape[1] == 784:
        return shape[0]
    got = f"shape {shape}" if len(shape) <= 8 else f"{len(shape)} dimensions"
    raise ApiError(422, f"{what} has {got}; expected (28,28), (N,28,28), (N,28,28,1) or (N,784)")


def _as_images(array: np.ndarray, what: str) -> np.ndarray:
    image_count(array.shape, what)
    return array.reshape(-1, 28, 28)


def _regular_images(images: list) -> np.ndarray | None:
    """The usual ``"images"`` (lists of 28 rows of 28 numbers, or of 784 numbers) as ``[N,28,28]``, read in
    one pass; ``None`` for anything else (nulls, strings, ragged rows, other nesting), which
    :func:`parse_json` then reads, and explains, the general way."""
    if not images:
        return None
    if all(type(image) is list and len(image) == 784 for image in images):
        numbers = chain.from_iterable(images)
    elif all(
        type(image) is list and len(image) == 28 and all(type(row) is list and len(row) == 28 for row in image)
        for image in images
    ):
        numbers = chain.from_iterable(chain.from_iterable(images))
    else:
        return None
    try:
        with np.errstate(over="ignore"):  # numbers beyond float32 become Inf, refused as such by check_batch
            array = np.fromiter(numbers, np.float32, 784 * len(images))
    except (ValueError, TypeError, OverflowError):
        return None
    if np.isnan(array).any():  # JSON has no NaN: these were nulls
        return None
    return array.reshape(-1, 28, 28)


def parse_json(body: bytes, limits: Limits) -> np.ndarray:
    """``{"images": [...], "pixel_scale": 1 | 255}`` → batch."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON ({exc.msg})") from None
    if not isinstance(payload, dict) or "images" not in payload:
        raise ApiError(400, 'JSON body must be an object with an "images" list')
    images, scale = payload["images"], payload.get("pixel_scale", 1)
    if isinstance(scale, bool) or scale not in (1, 255):
        raise ApiError(422, f"pixel_scale must be 1 (values 0..1) or 255 (values 0..255), not {brief(scale)}")
    if not isinstance(images, list):
        raise ApiError(422, '"images" must be a list of images (28x28 nested lists or flat lists of 784 numbers)')
    if len(images) > limits.max_batch:
        raise ApiError(413, f"{len(images)} images in one request; the limit is {limits.max_batch}")
    array = _regular_images(images)
    if array is not None:
        return check_batch(array, limits, float(scale))
    try:
        with np.errstate(over="ignore"):  # numbers beyond float32 become Inf, refused below as such
            array = np.array(images, dtype=np.float32)
    except (ValueError, TypeError):
        raise ApiError(
            422,
            "every image must be 28x28 nested lists or a flat list of 784 numbers (no nulls, strings or ragged rows)",
        ) from None
    if array.ndim == 1 and len(array) == 0:
        raise ApiError(422, "no images: send at least one")
    if not (array.ndim == 3 or (array.ndim == 2 and array.shape[1] == 784)):
        raise ApiError(422, f'"images" has shape {array.shape}; expected a list of 28x28 or 784-long images')
    if np.isnan(array).any():  # JSON has no NaN: these were nulls
        raise ApiError(422, "images hold nulls; every pixel must be a number")
    return check_batch(_as_images(array, '"images"'), limits, float(scale))


def parse_npy(body: bytes, limits: Limits) -> np.ndarray:
    """The bytes of one ``.npy`` file (never unpickled) → batch."""
    if not body.startswith(NPY_MAGIC):
        raise ApiError(400, "body is not a .npy file (it must start with the \\x93NUMPY magic)")
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ApiError(400, f".npy format version {version} is not supported; numpy.save writes 1.0")
        shape, fortran_order, dtype = readers[version](stream)
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - the header is a Python literal: its parser raises many types
        raise ApiError(400, f".npy header is malformed ({type(exc).__name__}: {str(exc)[:120]})") from None
    if dtype.hasobject:
        raise ApiError(422, ".npy holds Python objects; only uint8 (0..255) or float (0..1) arrays are accepted")
    if not (dtype == np.uint8 or dtype.kind == "f"):
        raise ApiError(422, f".npy dtype {dtype} is not accepted; send uint8 (0..255) or float (0..1)")
    if not all(type(side) is int for side in shape):  # numpy's own check lets booleans through
        raise ApiError(400, f".npy header is malformed (its shape holds {brief(shape)}: whole numbers only)")
    if any(side < 0 for side in shape):
        raise ApiError(400, f".npy header is malformed (shape {tuple(shape)} has a negative side)")
    count = image_count(tuple(shape), "the .npy array")
    if count > limits.max_batch:
        raise ApiError(413, f"{count} images in one request; the limit is {limits.max_batch}")
    size = math.prod(shape)
    if len(body) - stream.tell() < size * dtype.itemsize:
        raise ApiError(
            400, f".npy data is truncated: shape {tuple(shape)} needs {size * dtype.itemsize} bytes after the header"
        )
    # A read-only view of the body, no copy: check_batch makes the float32 batch from it.
    array = np.frombuffer(body, dtype=dtype, count=size, offset=stream.tell())
    array = array.reshape(shape, order="F" if fortran_order else "C")
    return check_batch(_as_images(array, "the .npy array"), limits, 255.0 if dtype == np.uint8 else 1.0)


@dataclass(frozen=True)
class Part:
    """One part of a multipart body: its form name, its filename (``None`` for a plain field) and bytes."""

    name: str | None
    filename: str | None
    data: bytes


def _part_headers(block: bytes) -> dict[bytes, bytes]:
    headers = {}
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise ApiError(400, "malformed multipart body (a part header line has no name: value)")
        headers[name.strip().lower()] = value.strip()
    return headers


def split_multipart(body: bytes, boundary: bytes) -> list[Part]:
    """The parts of a ``multipart/form-data`` body held in memory (RFC 7578 and RFC 2046's syntax).

    The whole body is already read and bounded, so the parts are slices of it: no spooled
    temporary files and no streaming state machine. Raises 400 for a malformed or truncated body.
    """
    delimiter = b"--" + boundary
    first = body.find(delimiter)
    if first == -1 or (first > 0 and body[first - 2 : first] != b"\r\n"):
        raise ApiError(400, "malformed multipart body (no part starts with the boundary)")
    if delimiter + b"--" not in body:
        raise ApiError(400, "multipart body is truncated: its closing boundary is missing")
    separator = b"\r\n" + delimiter
    parts, at = [], first + len(delimiter)
    while not body.startswith(b"--", at):
        line_end = body.find(b"\r\n", at)
        if line_end == -1 or body[at:line_end].strip(b" \t"):
            raise ApiError(400, "malformed multipart body (a boundary line carries other text)")
        headers_start = line_end + 2
        if body.startswith(b"\r\n", headers_start):
            headers, data_start = {}, headers_start + 2
        else:
            headers_end = body.find(b"\r\n\r\n", headers_start)
            if headers_end == -1:
                raise ApiError(400, "malformed multipart body (a part's headers never end)")
            headers, data_start = _part_headers(body[headers_start:headers_end]), headers_end + 4
        data_end = body.find(separator, data_start)
        if data_end == -1:
            raise ApiError(400, "multipart body is truncated: a part has no closing boundary")
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data":
            raise ApiError(400, "malformed multipart body (a part's Content-Disposition is not form-data)")
        name, filename = options.get(b"name"), options.get(b"filename")
        parts.append(
            Part(
                name.decode("utf-8", "replace") if name is not None else None,
                filename.decode("utf-8", "replace") if filename is not None else None,
                body[data_start:data_end],
            )
        )
        at = data_end + len(separator)
    return parts


def multipart_files(content_type: str, body: bytes, limits: Limits) -> list[bytes]:
    """The image files of a multipart body (parts named ``file``), checked for count, not decoded."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart Content-Type has no boundary parameter")
    parts = split_multipart(body, boundary)
    files = [part for part in parts if part.filename is not None]
    if len(parts) - len(files) > MAX_FORM_FIELDS:
        raise ApiError(413, 'too many form fields besides the files; send only parts named "file"')
    misplaced = sorted({part.name for part in parts if part.filename is None and part.name in QUERY_PARAMETERS})
    if misplaced:
        raise ApiError(422, f"{', '.join(misplaced)}: query parameters, not form fields (/classify?preprocess=none)")
    files = [part for part in files if part.name == "file"]
    if not files:
        raise ApiError(422, 'multipart body has no image part named "file"')
    if len(files) > limits.max_batch:
        raise ApiError(413, f"more than {limits.max_batch} images in one request; the limit is {limits.max_batch}")
    return [part.data for part in files]


def _declared_pixels(data: bytes, limits: Limits) -> int:
    """The pixels an image file's header declares (413 over the per-image limit); 0 for what is no image,
    which :func:`decode_image` refuses in turn."""
    try:
        width, height = open_image(data, limits.max_image_pixels).size
    except ApiError as exc:
        if exc.status == 413:
            raise
        return 0
    return width * height


def declared_pixels(files: list[bytes], limits: Limits) -> int:
    """The pixels all of a request's image files declare in their headers (read without decoding: cheap), or
    a 413 over the request's or an image's limit."""
    pixels = sum(_declared_pixels(data, limits) for data in files)
    if pixels > limits.max_request_pixels:
        raise ApiError(
            413,
            f"the request's image files declare {pixels} pixels in all; the limit is {limits.max_request_pixels} "
            "(AESERVE_MAX_REQUEST_PIXELS)",
        )
    return pixels


def decode_files(files: list[bytes], limits: Limits, preprocess: str = DEFAULT_RULE) -> np.ndarray:
    """Image files → ``float32 [N,28,28]``, under the request's budget: the pixels of all its files, read from
    their headers before any is decoded (413), and the CPU time of their decoding, checked after each (413).

    Blocking and costly: run it off the event loop (:class:`app.decoding.DecodePool`).
    """
    declared_pixels(files, limits)
    started, images = time.thread_time(), []
    for data in files:
        images.append(image_file(data, limits, preprocess))
        spent = time.thread_time() - started
        if spent * 1000 > limits.decode_cpu_ms:
            raise ApiError(
                413,
                f"decoding the request's image files took more than {limits.decode_cpu_ms} ms of CPU time "
                f"({len(images)} of {len(files)} files decoded); the limit is AESERVE_DECODE_CPU_MS",
            )
    # Counted by the caller; image_file's images are float32 in 0..1 by construction.
    return np.stack(images)


def parse_multipart(content_type: str, body: bytes, limits: Limits, preprocess: str) -> np.ndarray:
    """Parts named ``file``, each an image → batch, prepared by the rule ``preprocess`` names."""
    return decode_files(multipart_files(content_type, body, limits), limits, preprocess)


def image_file(data: bytes, limits: Limits, preprocess: str = DEFAULT_RULE) -> np.ndarray:
    """One uploaded image file → ``float32 [28,28]``, prepared by the rule ``preprocess`` names (app.preprocess)."""
    grey = decode_image(data, limits.max_image_pixels, limits.max_image_scans)
    return prepare(grey, preprocess)


def media_type(content_type: str) -> str:
    """The accepted media type named by a ``Content-Type`` header, or a 415."""
    media = content_type.split(";", 1)[0].strip().lower()
    if not media:
        raise ApiError(415, "missing Content-Type; send " + ", ".join(MEDIA_TYPES))
    if media not in MEDIA_TYPES:
        raise ApiError(415, f"Content-Type {media} is not accepted; send " + ", ".join(MEDIA_TYPES))
    return media


def read_images(content_type: str, body: bytes, limits: Limits, preprocess: str = DEFAULT_RULE) -> np.ndarray:
    """Decode any accepted request body into one ``float32 [N,28,28]`` batch in 0..1, or raise a 4xx."""
    media = media_type(content_type)
    if not body:
        raise ApiError(400, "request body is empty")
    if media == "application/json":
        return parse_json(body, limits)
    if media == "application/x-npy":
        return parse_npy(body, limits)
    return parse_multipart(content_type, body, limits, preprocess)


# Runs a blocking function off the event loop: :meth:`app.decoding.DecodePool.run`.
OffLoop = Callable[..., Awaitable[np.ndarray]]


async def decode_files_off_loop(files: list[bytes], limits: Limits, preprocess: str, off_loop: OffLoop) -> np.ndarray:
    """:func:`decode_files` run by ``off_loop``, in the lane the files' declared pixels choose (their headers
    are read here, on the loop: cheap, and a 413 before any decoder is taken)."""
    return await off_loop(decode_files, files, limits, preprocess, pixels=declared_pixels(files, limits))


async def read_images_off_loop(
    content_type: str, body: bytes, limits: Limits, preprocess: str, off_loop: OffLoop
) -> np.ndarray:
    """:func:`read_images`, with the image files of a multipart body decoded by ``off_loop``."""
    media = media_type(content_type)
    if media == "multipart/form-data" and body:
        return await decode_files_off_loop(multipart_files(content_type, body, limits), limits, preprocess, off_loop)
    return read_images(content_type, body, limits, preprocess)
