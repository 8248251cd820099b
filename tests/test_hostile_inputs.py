"""Hostile input: garbage, oversized, malformed and malicious requests in every input form, on every
endpoint and query parameter. Each gets its exact status with a JSON ``{"error": ...}`` that names no
internal path and carries no traceback, and the server keeps serving: in process, and as a real
uvicorn process that must still be alive (and correct) after the whole table.

Tests of the same area that exist already (tests/test_api_errors.py) are not repeated: the cases here
are other kinds, other forms of the same kind, other endpoints, and the default limits.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
from conftest import ROOT
from helpers import blank_png16, many_scans_jpeg, multipart, npy_bytes, png_bytes
from PIL import Image

from scripts import local_server
from scripts.api_examples import draw_digit

NPY = {"content-type": "application/x-npy"}
JSON_T = "application/json"
JSON = {"content-type": JSON_T}
MAX_BATCH = 1024  # the default limits, which both the in-process app and the real server use
MAX_BODY = 16 * 2**20
# If the service ever unpickled a request, the pickled object below would create this file.
UNPICKLED_MARKER = Path(tempfile.gettempdir()) / "aeserve-hostile-npy-was-unpickled"
FORBIDDEN_IN_ERRORS = ("Traceback", 'File "', ".py", "site-packages", str(ROOT), "/work/", "/tmp/")

Request = dict  # keyword arguments of httpx's request()


@dataclass(frozen=True)
class Case:
    """One hostile request: where it goes, how it is built (lazily), the status it must get."""

    id: str
    path: str
    build: Callable[[], Request]
    status: int
    check: Callable[[httpx.Response], None] | None = None  # more to check than the status and error shape


# ---------------------------------------------------------------- builders of the three input forms


def files(*blobs: bytes, kind: str = "image/png") -> Request:
    """A multipart body with one part named ``file`` per blob."""
    return multipart(*blobs, kind=kind)


def npy(array: np.ndarray) -> Request:
    """The array as an ``application/x-npy`` body (no pickle)."""
    return {"content": npy_bytes(array), "headers": NPY}


def raw(data: bytes, content_type: str | None = "application/x-npy") -> Request:
    """Bytes as they are, under ``content_type`` (none when ``None``)."""
    return {"content": data, "headers": {"content-type": content_type} if content_type else {}}


def as_json(payload: object) -> Request:
    """A JSON body (orjson, so nothing is changed on the way)."""
    return {"content": orjson.dumps(payload), "headers": JSON}


def flat(value: object, count: int = 1) -> dict:
    """``count`` flat images of 784 copies of ``value``."""
    return {"images": [[value] * 784 for _ in range(count)]}


def deep_json(before: bytes, depth: int, after: bytes = b"}") -> Request:
    """A JSON body with a list nested ``depth`` deep between ``before`` and ``after``."""
    return raw(before + b"[" * depth + b"0" + b"]" * depth + after, JSON_T)


def binary(inputs: list[dict], data: bytes, length: int | str | None = None, **head: object) -> Request:
    """A V2 request in the binary tensor data extension's form: a JSON head of ``inputs`` (and ``head``),
    then ``data``; ``Inference-Header-Content-Length`` is the head's length unless ``length`` says otherwise
    (``None``: the header's own length, ``""``: no header)."""
    json_head = json.dumps({"inputs": inputs, **head}).encode()  # json: orjson has no integers beyond 64 bits
    size = len(json_head) if length is None else length
    headers = {"content-type": "application/octet-stream"}
    if size != "":
        headers["inference-header-content-length"] = str(size)
    return {"content": json_head + data, "headers": headers}


def tensor(size: object = 3136, datatype: str = "FP32", shape: object = (1, 784), **more: object) -> dict:
    """A V2 input tensor whose data is binary, of ``size`` bytes."""
    parameters = {"binary_data_size": size}
    return {"name": "images", "shape": list(shape), "datatype": datatype, "parameters": parameters} | more


def with_query(request: Request, **params: str) -> Request:
    return request | {"params": params}


def npy_header(header: str, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    """A hand-written ``.npy`` file: magic, version, header length, ``header`` padded to 64, ``data``."""
    text = header.encode("latin-1")
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(text)) + text + data


class UnpickleTrap:
    """Pickles to a call of ``open(UNPICKLED_MARKER, "w")``: unpickling it leaves a file behind."""

    def __reduce__(self):
        return open, (str(UNPICKLED_MARKER), "w")


def pickled(array: np.ndarray) -> bytes:
    """What ``np.save(allow_pickle=True)`` writes for an array holding objects: a pickle after the header."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def pickled_object_npy() -> bytes:
    """An object array of MNIST's shape whose pickle, if ever loaded, runs ``UnpickleTrap``."""
    array = np.zeros((1, 28, 28), dtype=object)
    array[0, 0, 0] = UnpickleTrap()
    return pickled(array)


# ---------------------------------------------------------------- image files, made with Pillow or by hand


@cache
def seven() -> Image.Image:
    """A 7 drawn dark on light noisy paper, 300x200: every accepted form of it classifies as 7."""
    return draw_digit(7, seed=7)


@cache
def one() -> Image.Image:
    return draw_digit(1, seed=1)


def saved(image: Image.Image | list[Image.Image], fmt: str, **options: object) -> bytes:
    """Pillow's bytes of ``image`` in ``fmt``; a list of images becomes an animated / multi-page file."""
    buffer = io.BytesIO()
    if isinstance(image, list):
        image[0].save(buffer, format=fmt, save_all=True, append_images=image[1:], **options)
    else:
        image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose IHDR (correct CRC) declares ``width`` x ``height`` grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)  # far less than the image declared: a decompression bomb's header
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    return bytes(out)


def gif_screen(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen says ``width`` x ``height``."""
    return patched(saved(Image.new("L", (1, 1)), "GIF"), 6, "<HH", width, height)


def bmp_declaring(width: int, height: int) -> bytes:
    """A 2x2 BMP whose info header says ``width`` x ``height``."""
    return patched(saved(Image.new("L", (2, 2)), "BMP"), 18, "<ii", width, height)


def png16() -> bytes:
    """The 7 as a 16-bit grey PNG (mode I;16)."""
    return png_bytes(Image.fromarray(np.asarray(seven(), np.uint16) * 257))


def lab_tiff() -> bytes:
    """The 7 as a CIE L*a*b* TIFF (Pillow has no LAB → L conversion)."""
    neutral = Image.new("L", seven().size, 128)
    return saved(Image.merge("LAB", (seven(), neutral, neutral)), "TIFF")


def float_tiff(value: float) -> bytes:
    pixels = np.asarray(seven(), np.float32).copy()
    pixels[:10, :10] = value
    return saved(Image.fromarray(pixels, "F"), "TIFF")


def palette_png_with_transparency() -> bytes:
    image = seven().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return saved(image, "PNG", transparency=int(np.asarray(image)[0, 0]))


def corrupt_idat() -> bytes:
    data = bytearray(png_bytes(seven()))
    start = data.index(b"IDAT") + 4
    data[start : start + 64] = bytes(64)
    return bytes(data)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 0 0 moveto 28 28 lineto stroke showpage\n"
ZEROS = np.zeros((1, 28, 28), np.uint8)


@cache
def sixty_png16() -> list[bytes]:
    """Sixty blank 4000x4000 16-bit PNGs (one file sixty times): 16 million pixels each, the per-image limit."""
    return [blank_png16()] * 60


def b64_instances(blobs: list[bytes]) -> Request:
    return as_json({"instances": [{"b64": base64.b64encode(blob).decode()} for blob in blobs]})


def npy_shape(shape: str) -> Request:
    """An .npy body of 784 bytes whose header's shape is ``shape``, as written."""
    return raw(npy_header(f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}", bytes(784)))


def too_many_fields() -> Request:
    return files(png_bytes(seven())) | {"data": {f"field{i}": "x" for i in range(20)}}


def file_as_text_field() -> Request:
    return {"files": [("file", (None, b"just text, no filename"))]}


def truncated_multipart() -> Request:
    boundary = "hostile-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode() + png_bytes(seven())[:500]
    return raw(body, f"multipart/form-data; boundary={boundary}")


# ---------------------------------------------------------------- what an answer must look like


def error_of(response: httpx.Response) -> str:
    """The error message of a response that must be a clean JSON error, or fail."""
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str), body
    message = body["error"]
    assert message.strip(), "an empty error message"
    for leak in FORBIDDEN_IN_ERRORS:
        assert leak not in message, (leak, message)
    return message


def label(expected: int) -> Callable[[httpx.Response], None]:
    """The first file's prediction is ``expected`` (the first frame of an animation, the 7 of any form)."""

    def check(response: httpx.Response) -> None:
        predictions = response.json()["predictions"]
        assert [p["label"] for p in predictions] == [expected], predictions

    return check


def codes_of(count: int) -> Callable[[httpx.Response], None]:
    def check(response: httpx.Response) -> None:
        body = response.json()
        assert len(body["codes"]) == count and all(len(c) == body["latent_dim"] for c in body["codes"])

    return check


def says(*words: str) -> Callable[[httpx.Response], None]:
    """The error message names what is wrong."""

    def check(response: httpx.Response) -> None:
        message = error_of(response)
        assert all(w in message for w in words), (words, message)

    return check


def never_unpickled(response: httpx.Response) -> None:
    says("objects")(response)
    assert not UNPICKLED_MARKER.exists(), "the service unpickled a request body"


def n_images(value: object, count: int) -> Request:
    return as_json(flat(value, count))


# ---------------------------------------------------------------- the table

E, R, D, C, K = "/encode", "/reconstruct", "/denoise", "/classify", "/cluster"
V1, V2 = "/v1/models/mnist-conv", "/v2/models/mnist-conv"
ZERO = [0.0] * 784
V2_IMAGE = orjson.dumps({"name": "images", "shape": [1, 784], "datatype": "FP32", "data": ZERO})

CASES = [
    # --- multipart image files
    Case("mp-not-an-image-pdf", R, lambda: files(b"%PDF-1.7\n1 0 obj << >> endobj\n"), 400, says("not an image")),
    Case("mp-truncated-jpeg", D, lambda: files(saved(seven(), "JPEG")[:1500], kind="image/jpeg"), 400),
    Case("mp-png-signature-and-ihdr-only", K, lambda: files(png_bytes(seven())[:33]), 400),
    Case("mp-png-corrupt-idat", E, lambda: files(corrupt_idat()), 400, says("corrupt")),
    Case("mp-truncated-webp", C, lambda: files(saved(seven(), "WEBP")[:40], kind="image/webp"), 400),
    Case("mp-empty-file-part", R, lambda: files(b""), 400),
    Case("mp-png-declares-20000x20000", C, lambda: files(png_declaring(20000, 20000)), 413, says("limit")),
    Case("mp-png-declares-4001x4001", E, lambda: files(png_declaring(4001, 4001)), 413, says("16000000")),
    Case("mp-gif-screen-65535x65535", D, lambda: files(gif_screen(65535, 65535), kind="image/gif"), 413),
    Case("mp-bmp-declares-30000x30000", K, lambda: files(bmp_declaring(30000, 30000), kind="image/bmp"), 413),
    Case("mp-eps-never-handed-to-ghostscript", C, lambda: files(EPS, kind="application/postscript"), 400),
    Case("mp-ico-not-an-accepted-format", E, lambda: files(saved(seven(), "ICO"), kind="image/x-icon"), 400),
    Case("mp-float-tiff-with-nan", C, lambda: files(float_tiff(np.nan), kind="image/tiff"), 422, says("NaN")),
    Case("mp-float-tiff-with-inf", R, lambda: files(float_tiff(np.inf), kind="image/tiff"), 422, says("infinite")),
    Case("mp-animated-gif-first-frame", C, lambda: files(saved([seven(), one(), one()], "GIF")), 200, label(7)),
    Case("mp-apng-first-frame", C, lambda: files(saved([seven(), one(), one()], "PNG")), 200, label(7)),
    Case("mp-multipage-tiff-first-page", C, lambda: files(saved([seven(), one()], "TIFF")), 200, label(7)),
    Case("mp-16-bit-png", C, lambda: files(png16()), 200, label(7)),
    Case("mp-jpeg-of-3000-scans", E, lambda: files(many_scans_jpeg(), kind="image/jpeg"), 422, says("scans")),
    Case("mp-png-1x16000000-with-no-data", C, lambda: files(png_declaring(1, 16_000_000)), 400, says("truncated")),
    Case("mp-sixty-16-bit-4000x4000-pngs", C, lambda: files(*sixty_png16()), 413, says("MAX_REQUEST_PIXELS")),
    Case("b64-sixty-16-bit-4000x4000-pngs", V1 + ":predict", lambda: b64_instances(sixty_png16()), 413),
    Case("b64-jpeg-of-3000-scans", V1 + ":predict", lambda: b64_instances([many_scans_jpeg()]), 422, says("scans")),
    Case("mp-cmyk-jpeg", C, lambda: files(saved(seven().convert("CMYK"), "JPEG", quality=95)), 200, label(7)),
    Case("mp-palette-png-transparent", C, lambda: files(palette_png_with_transparency()), 200, label(7)),
    Case("mp-lab-tiff", C, lambda: files(lab_tiff(), kind="image/tiff"), 200, label(7)),
    Case("mp-no-boundary", E, lambda: raw(png_bytes(seven()), "multipart/form-data"), 400, says("boundary")),
    Case("mp-not-multipart-inside", D, lambda: raw(b"hello", "multipart/form-data; boundary=xyz"), 400),
    Case("mp-truncated-body", K, truncated_multipart, 400, says("truncated")),
    Case("mp-file-part-without-filename", R, file_as_text_field, 422, says("file")),
    Case("mp-1030-files-over-limit", E, lambda: files(*[png_bytes(ZEROS[0])] * 1030), 413, says("1024")),
    Case("mp-20-extra-fields", C, too_many_fields, 413, says("fields")),
    # --- JSON
    Case("json-100000-levels-of-brackets", E, lambda: raw(b'{"images": ' + b"[" * 100_000, JSON_T), 400),
    Case("json-40-levels-nested-number", R, lambda: raw(b'{"images":%s0%s}' % (b"[" * 40, b"]" * 40), JSON_T), 422),
    Case("json-ragged-rows", D, lambda: as_json({"images": [[[0.0] * 28] * 27 + [[0.0] * 27]]}), 422),
    Case("json-null-image", C, lambda: as_json({"images": [None]}), 422, says("shape")),
    Case("json-null-pixel", C, lambda: as_json(flat(None)), 422, says("nulls")),
    Case("json-null-images", K, lambda: as_json({"images": None}), 422, says("list")),
    Case("json-string-image", E, lambda: as_json({"images": ["iVBORw0KGgo="]}), 422),
    Case("json-object-images", R, lambda: as_json({"images": {"0": [0] * 784}}), 422),
    Case("json-empty-rows", D, lambda: as_json({"images": [[]]}), 422, says("shape")),
    Case("json-rank-4-images", C, lambda: as_json({"images": np.zeros((1, 28, 28, 1)).tolist()}), 422, says("shape")),
    Case("json-28-by-27", K, lambda: as_json({"images": [[[0.0] * 27] * 28]}), 422, says("shape")),
    Case("json-overflows-float32", E, lambda: as_json(flat(1e39)), 422, says("infinite")),
    Case("json-number-beyond-double", R, lambda: raw(b'{"images": [[' + b"1e400," * 783 + b"1]]}", JSON_T), 400),
    Case("json-nan-token", D, lambda: raw(b'{"images": [[' + b"NaN," * 783 + b"0]]}", JSON_T), 400),
    Case("json-infinity-token", C, lambda: raw(b'{"images": [[Infinity]]}', JSON_T), 400),
    Case("json-negative-at-scale-255", K, lambda: as_json(flat(-1) | {"pixel_scale": 255}), 422, says("0..255")),
    Case("json-just-over-1", E, lambda: as_json(flat(1.0001)), 422, says("0..1")),
    Case("json-integer-10e30", R, lambda: raw(b'{"images": [[' + b"1" + b"0" * 30 + b"]]}", JSON_T), 422),
    Case("json-pixel-scale-true", D, lambda: as_json(flat(0) | {"pixel_scale": True}), 422, says("pixel_scale")),
    Case("json-pixel-scale-string", C, lambda: as_json(flat(0) | {"pixel_scale": "255"}), 422, says("pixel_scale")),
    Case("json-pixel-scale-null", K, lambda: as_json(flat(0) | {"pixel_scale": None}), 422, says("pixel_scale")),
    Case("json-pixel-scale-0", E, lambda: as_json(flat(0) | {"pixel_scale": 0}), 422, says("pixel_scale")),
    Case("json-pixel-scale-list", R, lambda: as_json(flat(0) | {"pixel_scale": [255]}), 422, says("pixel_scale")),
    Case("json-1025-images-over-limit", D, lambda: n_images(0, MAX_BATCH + 1), 413, says("1025", "1024")),
    Case("json-invalid-utf8", C, lambda: raw(b'{"images": "\xff\xfe"}', JSON_T), 400),
    Case("json-utf16", K, lambda: raw(orjson.dumps(flat(0)).decode().encode("utf-16"), JSON_T), 400),
    Case("json-trailing-garbage", E, lambda: raw(orjson.dumps(flat(0)) + b" trailing", JSON_T), 400),
    # --- .npy
    Case("npy-wrong-magic", R, lambda: raw(b"\x93NUMPX" + npy_bytes(ZEROS)[6:]), 400, says("magic")),
    Case("npy-magic-only", D, lambda: raw(b"\x93NUMPY"), 400),
    Case("npy-pickled-object-array", C, lambda: raw(pickled_object_npy()), 422, never_unpickled),
    Case("npy-struct-with-object-field", K, lambda: raw(pickled(np.zeros(2, [("a", "O"), ("b", "f4")]))), 422),
    Case("npy-complex128", E, lambda: npy(np.zeros((1, 28, 28), np.complex128)), 422, says("complex128")),
    Case("npy-bytes-dtype", R, lambda: npy(np.full((1, 28, 28), b"x")), 422),
    Case("npy-bool-dtype", D, lambda: npy(np.zeros((1, 28, 28), bool)), 422, says("bool")),
    Case("npy-int8-dtype", C, lambda: npy(np.zeros((1, 28, 28), np.int8)), 422, says("int8")),
    Case("npy-datetime64", K, lambda: npy(np.zeros((1, 28, 28), "datetime64[s]")), 422),
    Case("npy-structured-floats", E, lambda: npy(np.zeros((1, 28), [("x", "f4", (28,))])), 422),
    Case("npy-scalar", R, lambda: npy(np.float32(0.5)), 422, says("shape")),
    Case("npy-rank-5", D, lambda: npy(np.zeros((1, 1, 28, 28, 1), np.uint8)), 422, says("shape")),
    Case("npy-rgb-channels", C, lambda: npy(np.zeros((2, 28, 28, 3), np.uint8)), 422, says("shape")),
    Case("npy-transposed-784", K, lambda: npy(np.zeros((784, 1), np.uint8)), 422, says("shape")),
    Case("npy-empty-784", E, lambda: npy(np.zeros((0, 784), np.float32)), 422, says("no images")),
    Case("npy-1025-images-over-limit", R, lambda: npy(np.zeros((MAX_BATCH + 1, 28, 28), np.uint8)), 413),
    Case(
        "npy-header-claims-a-billion-images",
        D,
        lambda: raw(npy_header("{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000, 28, 28), }", b"\0")),
        413,
    ),
    Case(
        "npy-negative-dimension",
        C,
        lambda: raw(npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 28, 28), }", bytes(3136))),
        400,
    ),
    Case("npy-header-nested-brackets", K, lambda: raw(npy_header("[" * 3000)), 400, says("header")),
    Case("npy-header-nested-parens", E, lambda: raw(npy_header("(" * 300 + ")" * 300)), 400, says("header")),
    Case("npy-header-expression", R, lambda: raw(npy_header("{'descr': '<f4', 'shape': (2**40,)}")), 400),
    Case("npy-header-over-10000-bytes", D, lambda: raw(npy_header("{" + " " * 20000 + "}")), 400),
    Case("npy-format-version-3", C, lambda: raw(npy_header("{}", version=b"\x03\x00")), 400, says("version")),
    Case("npy-header-cut-short", K, lambda: raw(npy_bytes(ZEROS)[:40]), 400),
    Case("npy-minus-infinity", E, lambda: npy(np.full((1, 28, 28), -np.inf)), 422, says("infinite")),
    Case("npy-negative-float", R, lambda: npy(np.full((1, 28, 28), -0.1, np.float32)), 422, says("0..1")),
    Case("npy-float-over-range", D, lambda: npy(np.full((1, 784), 1.5, np.float64)), 422, says("0..1")),
    Case("npy-big-endian-float", E, lambda: npy(np.zeros((3, 28, 28), ">f4")), 200, codes_of(3)),
    # --- media type and body
    Case("no-content-type-npy-body", K, lambda: raw(npy_bytes(ZEROS), None), 415, says("Content-Type")),
    Case("raw-png-as-image-png", C, lambda: raw(png_bytes(seven()), "image/png"), 415, says("image/png")),
    Case("form-urlencoded", E, lambda: raw(b"images=0", "application/x-www-form-urlencoded"), 415),
    Case("json-content-type-npy-body", R, lambda: raw(npy_bytes(ZEROS), JSON_T), 400, says("JSON")),
    Case("npy-content-type-json-body", D, lambda: raw(orjson.dumps(flat(0))), 400, says(".npy")),
    Case("no-body", C, lambda: raw(b""), 400, says("empty")),
    Case("no-body-multipart", K, lambda: raw(b"", "multipart/form-data; boundary=x"), 400, says("empty")),
    Case("body-over-16-mib", E, lambda: raw(b"\x93NUMPY" + bytes(MAX_BODY)), 413, says(str(MAX_BODY))),
    # --- query parameters
    Case("model-path-traversal", K, lambda: with_query(npy(ZEROS), model="../../etc/passwd"), 404, says("unknown")),
    Case("model-non-ascii", E, lambda: with_query(npy(ZEROS), model="mnist-\u00e9\u4e2d"), 404, says("unknown")),
    Case("dataset-upper-case", R, lambda: with_query(npy(ZEROS), dataset="MNIST"), 404, says("dataset")),
    Case("dataset-cifar10", D, lambda: with_query(npy(ZEROS), dataset="cifar10"), 404, says("dataset")),
    Case(
        "version-unknown-tf-serving",
        "/v1/models/mnist-conv/versions/999:predict",
        lambda: as_json({"instances": [[[0.0] * 28] * 28]}),
        404,
        says("version 999"),
    ),
    Case(
        "version-unknown-kserve-v2",
        "/v2/models/mnist-conv/versions/999/infer",
        lambda: as_json({"inputs": []}),
        404,
        says("version 999"),
    ),
    Case("version-not-a-number-v2", "/v2/models/mnist-conv/versions/abc/infer", lambda: as_json({}), 404, says("abc")),
    Case("model-unknown-tf-serving", "/v1/models/mnist-nope:predict", lambda: as_json({}), 404, says("unknown")),
    Case("noise-std-nan", D, lambda: with_query(npy(ZEROS), noise_std="nan"), 422, says("noise_std")),
    Case("noise-std-inf", D, lambda: with_query(npy(ZEROS), noise_std="inf"), 422, says("noise_std")),
    Case("noise-std-negative", D, lambda: with_query(npy(ZEROS), noise_std="-0.1"), 422, says("noise_std")),
    Case("noise-std-1e309", D, lambda: with_query(npy(ZEROS), noise_std="1e309"), 422, says("noise_std")),
    Case("seed-fraction", D, lambda: with_query(npy(ZEROS), noise_std="0.5", seed="1.5"), 422, says("seed")),
    Case("seed-2-to-the-32", D, lambda: with_query(npy(ZEROS), noise_std="0.5", seed=str(2**32)), 422, says("seed")),
    Case("seed-5000-digits", D, lambda: with_query(npy(ZEROS), noise_std="0.5", seed="9" * 5000), 422, says("seed")),
    Case("seed-with-underscore", D, lambda: with_query(npy(ZEROS), noise_std="0.5", seed="1_000"), 422, says("seed")),
    Case("noise-std-with-underscore", D, lambda: with_query(npy(ZEROS), noise_std="0.2_5"), 422, says("noise_std")),
    Case("version-arabic-indic-one", E, lambda: with_query(npy(ZEROS), model="mnist-conv", version="\u0661"), 422),
    Case("version-4301-digits-query", E, lambda: with_query(npy(ZEROS), model="mnist-conv", version="9" * 4301), 422),
    Case("version-4301-digits-v1", V1 + "/versions/" + "9" * 4301 + ":predict", lambda: as_json({}), 404),
    Case("version-4301-digits-v2", V2 + "/versions/" + "9" * 4301 + "/infer", lambda: as_json({}), 404),
    Case("npy-shape-holds-a-boolean", E, lambda: npy_shape("(True, 784)"), 400, says("shape")),
    Case("npy-shape-holds-booleans-28", E, lambda: npy_shape("(1, True, 28)"), 400, says("shape")),
    Case("npy-shape-holds-a-float", E, lambda: npy_shape("(1.0, 784)"), 400),
    Case(
        "v2-uint8-half",
        V2 + "/infer",
        lambda: as_json({"inputs": [{"name": "images", "shape": [1, 784], "datatype": "UINT8", "data": [0.5] * 784}]}),
        422,
        says("UINT8"),
    ),
    Case("preprocess-empty", C, lambda: with_query(files(png_bytes(seven())), preprocess=""), 422, says("preprocess")),
    Case("preprocess-upper-case", K, lambda: with_query(npy(ZEROS), preprocess="NONE"), 422, says("preprocess")),
    # "²".isdigit() is true, but int("²") fails
    Case("version-superscript-two-v1", V1 + "/versions/\u00b2:predict", lambda: as_json({}), 404, says("whole")),
    Case("version-superscript-two-v2", V2 + "/versions/\u00b2/infer", lambda: as_json({}), 404, says("whole")),
    # values nested 1000 deep (orjson reads up to 1024): quoted shallowly in the error, never recursed into
    Case("pixel-scale-nested-1000-deep", E, lambda: deep_json(b'{"images": [[0]], "pixel_scale": ', 1000), 422),
    Case("signature-name-nested-1000-deep", V1 + ":predict", lambda: deep_json(b'{"signature_name": ', 1000), 400),
    Case(
        "instance-named-1000-deep",
        V1 + ":predict",
        lambda: raw(b'{"instances": [' + b'{"images": ' * 1000 + b"0" + b"}" * 1000 + b"]}", JSON_T),
        400,
        says("instance"),
    ),
    Case(
        "v2-output-name-nested-1000-deep",
        V2 + "/infer",
        lambda: deep_json(b'{"inputs": [' + V2_IMAGE + b'], "outputs": [{"name": ', 1000, b"}]}"),
        400,
        says("outputs"),
    ),
    Case(
        "v2-datatype-a-list",
        V2 + "/infer",
        lambda: as_json({"inputs": [{"name": "images", "shape": [1, 784], "datatype": ["FP32"], "data": [0.0] * 784}]}),
        400,
        says("datatype"),
    ),
    # --- V2's binary tensor data extension: every size checked against the body and the limits first
    Case("v2-binary-size-beyond-the-body", V2 + "/infer", lambda: binary([tensor()], bytes(100)), 400, says("3136")),
    Case("v2-binary-bytes-left-over", V2 + "/infer", lambda: binary([tensor()], bytes(4000)), 400, says("4000")),
    Case(
        "v2-binary-without-the-header",
        V2 + "/infer",
        lambda: binary([tensor()], bytes(3136), length=""),
        400,
        says("Inference-Header-Content-Length"),
    ),
    Case(
        "v2-binary-header-beyond-the-body",
        V2 + "/infer",
        lambda: binary([tensor()], bytes(3136), length=10**9),
        400,
        says("Inference-Header-Content-Length", "1000000000"),
    ),
    Case("v2-binary-header-zero", V2 + "/infer", lambda: binary([tensor()], bytes(3136), length=0), 400),
    Case("v2-binary-header-negative", V2 + "/infer", lambda: binary([tensor()], bytes(3136), length=-5), 400),
    Case("v2-binary-header-not-a-number", V2 + "/infer", lambda: binary([tensor()], bytes(3136), length="0x40"), 400),
    Case(
        "v2-binary-header-cuts-the-json",
        V2 + "/infer",
        lambda: binary([tensor()], bytes(3136), length=20),
        400,
        says("not valid JSON"),
    ),
    Case(
        "v2-binary-size-of-uint8-for-fp32",
        V2 + "/infer",
        lambda: binary([tensor(784)], bytes(784)),
        400,
        says("784 bytes", "needs 3136"),
    ),
    Case("v2-binary-fp16-odd-bytes", V2 + "/infer", lambda: binary([tensor(1567, "FP16")], bytes(1567)), 400),
    Case("v2-binary-size-negative", V2 + "/infer", lambda: binary([tensor(-3136)], bytes(3136)), 400, says("-3136")),
    Case("v2-binary-size-a-string", V2 + "/infer", lambda: binary([tensor("3136")], bytes(3136)), 400),
    Case("v2-binary-size-true", V2 + "/infer", lambda: binary([tensor(True)], b"\0"), 400, says("byte count")),
    Case("v2-binary-size-2-to-the-70", V2 + "/infer", lambda: binary([tensor(2**70)], bytes(3136)), 400),
    Case(
        "v2-binary-shape-of-a-trillion-images",
        V2 + "/infer",
        lambda: binary([tensor(3136 * 10**12, shape=(10**12, 784))], bytes(3136)),
        413,
        says("1024"),
    ),
    Case("v2-binary-and-data", V2 + "/infer", lambda: binary([tensor(data=ZERO)], bytes(3136)), 400, says("both")),
    Case(
        "v2-binary-nan",
        V2 + "/infer",
        lambda: binary([tensor()], np.full(784, np.nan, "<f4").tobytes()),
        422,
        says("NaN"),
    ),
    Case(
        "v2-binary-over-range",
        V2 + "/infer",
        lambda: binary([tensor()], np.full(784, 2.0, "<f4").tobytes()),
        422,
        says("0..1"),
    ),
    Case(
        "v2-binary-rank-71",
        V2 + "/infer",
        lambda: binary([tensor(shape=[1] * 70 + [784])], bytes(3136)),
        422,
        says("71 dimensions"),
    ),
    Case(
        "v2-bytes-after-json-data",
        V2 + "/infer",
        lambda: binary([{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": ZERO}], bytes(8)),
        400,
        says("binary_data_size"),
    ),
    Case(
        "v2-binary-output-flag-a-string",
        V2 + "/infer",
        lambda: binary([tensor()], bytes(3136), outputs=[{"name": "codes", "parameters": {"binary_data": "yes"}}]),
        400,
        says("binary_data"),
    ),
    Case(
        "v2-binary-uint8-serves",
        V2 + "/infer",
        lambda: binary([tensor(784, "UINT8", (1, 28, 28))], bytes(784), outputs=[{"name": "cluster"}]),
        200,
    ),
    Case(
        "v2-shape-of-rank-71",
        V2 + "/infer",
        lambda: as_json({"inputs": [{"name": "images", "shape": [1] * 70 + [784], "datatype": "FP32", "data": ZERO}]}),
        422,
        says("71 dimensions"),
    ),
]

assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


def check_answer(case: Case, response: httpx.Response) -> None:
    """The exact status; an error is clean JSON; then whatever else the case checks."""
    assert response.status_code == case.status, (case.id, response.status_code, response.text[:300])
    if case.status >= 400:
        error_of(response)
    if case.check is not None:
        case.check(response)


def good_requests() -> list[tuple[str, Request, Callable[[httpx.Response], None]]]:
    """Good requests and what their answers must say: the drawn 7 classifies as 7, a npy batch encodes."""
    return [(C, files(png_bytes(seven())), label(7)), (E, npy(np.repeat(ZEROS, 3, axis=0)), codes_of(3))]


# ---------------------------------------------------------------- in process (the app over httpx's ASGI transport)


@pytest.mark.anyio
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_hostile_input_in_process(client, case):
    response = await client.request("POST", case.path, **case.build())
    check_answer(case, response)


@pytest.mark.anyio
async def test_in_process_app_still_serves_after_the_table(client):
    for path, request, check in good_requests():
        response = await client.post(path, **request)
        assert response.status_code == 200, response.text
        check(response)
    assert (await client.get("/readyz")).status_code == 200


# ---------------------------------------------------------------- a real uvicorn process


@pytest.fixture(scope="module")
def grpc_port() -> int:
    return local_server.free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory, grpc_port) -> Iterator[tuple[object, str]]:
    """One uvicorn process with the default settings (its gRPC service on ``grpc_port``), for the whole module."""
    log_path = tmp_path_factory.mktemp("hostile") / "uvicorn.log"
    with log_path.open("w") as log:
        process, base, _ = local_server.start("app.main:app", log=log, env={"AESERVE_GRPC_PORT": str(grpc_port)})
        try:
            yield process, base
        finally:
            local_server.stop(process)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_real_server(server, case):
    process, base = server
    with httpx.Client(base_url=base, timeout=60) as http:
        response = http.request("POST", case.path, **case.build())
    check_answer(case, response)
    assert process.poll() is None, "the server process died"


class Counted:
    """A request body of ``chunks`` chunks of ``size`` bytes, sent chunked, counting what was taken."""

    def __init__(self, chunks: int, size: int):
        self.chunks, self.size, self.taken = chunks, size, 0

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.taken += 1
            yield b"\x93NUMPY" + bytes(self.size - 6) if self.taken == 1 else bytes(self.size)


@pytest.mark.slow
def test_streamed_body_over_limit_is_413_and_the_server_stays(server):
    process, base = server
    body = Counted(chunks=48, size=2**20)  # 48 MiB, three times the limit, no Content-Length
    with httpx.Client(base_url=base, timeout=60) as http:
        response = http.post(E, content=iter(body), headers=NPY)
    assert response.status_code == 413, response.text
    assert str(MAX_BODY) in error_of(response)
    assert "content-length" not in response.request.headers  # it was streamed, chunked
    assert process.poll() is None


@pytest.mark.slow
def test_streamed_body_over_limit_stops_the_upload(server):
    _, base = server
    body = Counted(chunks=256, size=2**20)  # 256 MiB; the socket buffers hold a few MiB at most
    with httpx.Client(base_url=base, timeout=60) as http:
        response = http.post(E, content=iter(body), headers=NPY)
    assert response.status_code == 413
    assert body.taken < body.chunks, f"the client had to send all {body.chunks} MiB before the 413"


@pytest.mark.slow
def test_real_server_still_serves_after_the_table(server):
    process, base = server
    with httpx.Client(base_url=base, timeout=60) as http:
        for path, request, check in good_requests():
            response = http.post(path, **request)
            assert response.status_code == 200, response.text
            check(response)
        assert http.get("/readyz").status_code == 200
    assert process.poll() is None, "the server process died"
    assert not UNPICKLED_MARKER.exists()


# ---------------------------------------------------------------- gRPC (the same real server's gRPC service)


def grpc_stubs():
    """The server's own stubs, imported only here (their protobuf names are process-wide)."""
    from app.protocols.oip import grpc_predict_v2_pb2 as pb
    from app.protocols.oip import grpc_predict_v2_pb2_grpc as pb_grpc

    return pb, pb_grpc


def infer(raw: list[bytes] | None = None, model: str = "mnist-conv", inputs: int = 1, **tensor: object):
    """A ModelInferRequest of ``inputs`` tensors (``tensor`` changes the first) and ``raw`` contents."""
    pb, _ = grpc_stubs()
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[bytes(3136)] if raw is None else raw)
    for _ in range(inputs):
        request.inputs.add(name="images", datatype="FP32", shape=[1, 784])
    for key, value in tensor.items():
        if key == "contents":
            request.inputs[0].contents.CopyFrom(pb.InferTensorContents(**value))
        elif key == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        else:
            setattr(request.inputs[0], key, value)
    return request


def with_outputs(request, *names: str):
    for name in names:
        request.outputs.add(name=name)
    return request


INVALID, NOT_FOUND, TOO_BIG = "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"
GRPC_CASES = {
    "unknown-model": (lambda: infer(model="resnet"), NOT_FOUND, "unknown model"),
    "version-not-a-number": (lambda: _versioned("abc"), NOT_FOUND, "whole numbers"),
    "two-inputs": (lambda: infer([bytes(3136)] * 2, inputs=2), INVALID, "one input"),
    "raw-too-short": (lambda: infer([bytes(3135)]), INVALID, "needs 3136"),
    "raw-too-long": (lambda: infer([bytes(3137)]), INVALID, "needs 3136"),
    "two-raw-entries": (lambda: infer([bytes(3136)] * 2), INVALID, "2 entries"),
    "raw-and-contents": (lambda: infer(contents={"fp32_contents": [0.0] * 784}), INVALID, "both"),
    "fp16-without-raw": (lambda: infer([], datatype="FP16"), INVALID, "raw_input_contents"),
    "bytes-datatype": (lambda: infer(datatype="BYTES"), INVALID, "BYTES"),
    "negative-dimension": (lambda: infer(shape=[-1, 784]), INVALID, "non-negative"),
    "trillion-images": (lambda: infer(shape=[10**12, 784]), TOO_BIG, "1024"),
    "not-an-image-shape": (lambda: infer([bytes(3136)], shape=[2, 392]), INVALID, "expected"),
    "nan": (lambda: infer([np.full(784, np.nan, "<f4").tobytes()]), INVALID, "NaN"),
    "contents-over-range": (lambda: infer([], contents={"fp32_contents": [2.0] * 784}), INVALID, "0..1"),
    "contents-too-few": (lambda: infer([], contents={"fp32_contents": [0.0] * 783}), INVALID, "783"),
    "contents-in-another-field": (lambda: infer([], contents={"int_contents": [0] * 784}), INVALID, "0 values"),
    "unknown-output": (lambda: with_outputs(infer(), "logits"), INVALID, "logits"),
}


def _versioned(version: str):
    request = infer()
    request.model_version = version
    return request


@pytest.fixture(scope="module")
def grpc_stub(server, grpc_port):
    _, pb_grpc = grpc_stubs()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_hostile_grpc_message(server, grpc_stub, case):
    build, code, words = GRPC_CASES[case]
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub.ModelInfer(build(), timeout=60)
    assert refused.value.code().name == code, refused.value.details()
    assert words in refused.value.details()
    for leak in FORBIDDEN_IN_ERRORS:
        assert leak not in refused.value.details()
    assert server[0].poll() is None, "the server process died"


@pytest.mark.slow
def test_grpc_message_over_the_body_limit_and_garbage_then_it_serves(server, grpc_port, grpc_stub):
    with pytest.raises(grpc.RpcError) as refused:  # refused by gRPC itself, from the message's length
        grpc_stub.ModelInfer(infer([bytes(MAX_BODY)]), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_BODY) in refused.value.details()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        not_protobuf = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as garbage:
            not_protobuf(b"\xff" * 64, timeout=60)
    assert garbage.value.code() == grpc.StatusCode.UNKNOWN  # gRPC's own answer to a message it cannot parse
    assert "Error parsing message with type 'inference.ModelInferRequest'" in garbage.value.details()
    answer = grpc_stub.ModelInfer(with_outputs(infer([np.zeros(784, "<f4").tobytes()]), "cluster"), timeout=60)
    assert [o.name for o in answer.outputs] == ["cluster"] and len(answer.raw_output_contents[0]) == 4
    assert server[0].poll() is None
