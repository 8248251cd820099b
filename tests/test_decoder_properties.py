"""Property-based tests of the decoders (hypothesis): for any array, bytes or JSON, the input path
either returns ``float32 [N,28,28]`` in 0..1 without NaN, or raises the project's :class:`ApiError`
with a 4xx status, never any other exception (which the service would answer with a 500).

The strategies mix well-formed inputs (so the success path is exercised too), inputs near the
boundaries (shapes, dtypes, ranges, limits) and damaged ones (bytes flipped, cut or inserted).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from app.errors import ApiError
from app.imaging import decode_image, mnist_style, plain_28
from app.inputs import Limits, parse_json, parse_multipart, parse_npy, read_images
from app.preprocess import PIPELINES, RULES, product_style

LIMITS = Limits(max_body_bytes=2**20, max_batch=8, max_image_pixels=200_000)
PROPERTY = settings(
    # modest for CI; AESERVE_PROPERTY_EXAMPLES=2000 for a deeper local search
    max_examples=int(os.environ.get("AESERVE_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
BOUNDARY = "property-boundary"


def batch_or_client_error(call: Callable[[], np.ndarray]) -> np.ndarray | None:
    """Run a decoder: its batch must be float32 [N,28,28] in 0..1 without NaN; its error a 4xx ApiError."""
    try:
        batch = call()
    except ApiError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        assert isinstance(error.message, str) and error.message
        event(f"refused {error.status}")
        return None
    event("accepted")
    assert isinstance(batch, np.ndarray) and batch.dtype == np.float32, type(batch)
    assert batch.ndim == 3 and batch.shape[1:] == (28, 28) and 1 <= len(batch) <= LIMITS.max_batch, batch.shape
    assert np.isfinite(batch).all() and batch.min() >= 0.0 and batch.max() <= 1.0
    return batch


def grey_or_client_error(call: Callable[[], np.ndarray], side: int | None = None) -> np.ndarray | None:
    """A grey image (2-D float32 in 0..1, no NaN; ``side`` x ``side`` when given) or a 4xx ApiError."""
    try:
        grey = call()
    except ApiError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        return None
    assert grey.ndim == 2 and grey.size > 0 and grey.dtype == np.float32, (grey.shape, grey.dtype)
    if side is not None:
        assert grey.shape == (side, side)
    assert np.isfinite(grey).all() and grey.min() >= 0.0 and grey.max() <= 1.0
    return grey


# ---------------------------------------------------------------- strategies

VALID_SHAPES = st.sampled_from([(28, 28), (1, 28, 28), (3, 28, 28), (2, 28, 28, 1), (2, 784), (0, 784), (9, 784)])
ANY_SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=30).filter(
    lambda shape: math.prod(shape) <= 30_000
)
DTYPES = st.sampled_from(
    ["u1", "<f2", "<f4", "<f8", ">f4", ">f8", "<i4", "i1", "<u2", "?", "<c8", "S3", "<U2", "<M8[s]", "<m8[s]"]
)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """Arrays of MNIST's shapes (mostly) or any shape, of many dtypes, with any values (NaN, Inf, huge)."""
    shape = draw(st.one_of(VALID_SHAPES, VALID_SHAPES, ANY_SHAPES))
    dtype = np.dtype(draw(DTYPES))
    if dtype.kind == "f" and draw(st.booleans()):  # mostly in range, so that some batches are accepted
        return draw(hnp.arrays(dtype, shape, elements=st.floats(0, 1, width=16)))
    return draw(hnp.arrays(dtype, shape))


def npy_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` cut short, with bytes flipped, or with bytes inserted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "flip", "insert"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "cut":
            del out[at:]
        elif kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(out)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(0, 1),
    st.sampled_from([0, 1, 255, 256, -1]),
    st.text(max_size=4),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """``{"images": ..., "pixel_scale": ...}`` with near-valid images (784 or 28x28 numbers) or any JSON."""
    value = st.one_of(st.floats(0, 1), st.integers(0, 255), JSON_LEAVES)
    flat = st.lists(value, min_size=783, max_size=785) | st.lists(st.floats(0, 1), min_size=784, max_size=784)
    nested = st.lists(st.lists(value, min_size=27, max_size=29), min_size=27, max_size=29)
    images = draw(st.one_of(st.lists(st.one_of(flat, nested), max_size=3), JSON_VALUES))
    payload = {"images": images}
    if draw(st.booleans()):
        payload["pixel_scale"] = draw(st.one_of(st.sampled_from([1, 255, 1.0, 255.0]), JSON_LEAVES))
    return orjson.dumps(payload)


IMAGE_FORMATS = st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "ICO", "PPM"])
IMAGE_MODES = st.sampled_from(["L", "RGB", "RGBA", "P", "1", "CMYK", "I;16", "I", "F", "LA"])


@st.composite
def image_files(draw: st.DrawFn) -> bytes:
    """An image file of random pixels, size, mode and format, often damaged afterwards."""
    height, width = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    pixels = draw(hnp.arrays(np.uint8, (height, width)))
    image = Image.fromarray(pixels)
    mode = draw(IMAGE_MODES)
    if mode == "F" and draw(st.booleans()):
        values = draw(hnp.arrays(np.float32, (height, width), elements=st.floats(width=32)))
        image = Image.fromarray(values, "F")
    elif mode == "I;16":
        image = Image.fromarray(pixels.astype(np.uint16) * draw(st.integers(1, 257)))
    else:
        image = image.convert(mode)
    buffer = io.BytesIO()
    fmt = draw(IMAGE_FORMATS)
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # not every format writes every mode: send the PNG instead
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format="PNG")
    data = buffer.getvalue()
    return draw(damaged(data)) if draw(st.booleans()) else data


def multipart_body(parts: list[tuple[str, bytes]], close: bool = True) -> bytes:
    """A ``multipart/form-data`` body with one part per ``(name, bytes)``, each a file."""
    body = b""
    for i, (name, data) in enumerate(parts):
        body += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="f{i}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


# ---------------------------------------------------------------- .npy


@PROPERTY
@given(arrays())
def test_parse_npy_of_any_array(array):
    batch = batch_or_client_error(lambda: parse_npy(npy_of(array), LIMITS))
    if batch is not None:  # accepted: the same pixels, scaled to 0..1
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        expected = array.reshape(-1, 28, 28).astype(np.float64) / scale
        np.testing.assert_allclose(batch, expected, rtol=1e-6, atol=1e-6)


@PROPERTY
@given(st.data())
def test_parse_npy_of_damaged_files(data):
    array = data.draw(arrays())
    batch_or_client_error(lambda: parse_npy(data.draw(damaged(npy_of(array))), LIMITS))


@PROPERTY
@given(st.binary(max_size=300), st.sampled_from([b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00"]))
def test_parse_npy_of_any_bytes(tail, head):
    batch_or_client_error(lambda: parse_npy(head + tail, LIMITS))


@PROPERTY
@given(st.text(max_size=200), st.binary(max_size=64))
def test_parse_npy_of_any_header(header, data):
    text = header.encode("latin-1", "replace")
    blob = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data
    batch_or_client_error(lambda: parse_npy(blob, LIMITS))


# ---------------------------------------------------------------- JSON


@PROPERTY
@given(json_bodies())
def test_parse_json_of_near_valid_and_any_json(body):
    batch_or_client_error(lambda: parse_json(body, LIMITS))


@PROPERTY
@given(st.one_of(st.binary(max_size=200), st.builds(orjson.dumps, JSON_VALUES)))
def test_parse_json_of_any_bytes(body):
    batch_or_client_error(lambda: parse_json(body, LIMITS))


@PROPERTY
@given(st.integers(1, 2000), st.sampled_from([b"[", b"{", b'{"images":[']))
def test_parse_json_of_deep_nesting(depth, opener):
    batch_or_client_error(lambda: parse_json(opener * depth, LIMITS))


# ---------------------------------------------------------------- images and multipart


@PROPERTY
@given(image_files())
def test_decode_image_then_preprocess(data):
    grey = grey_or_client_error(lambda: decode_image(data, LIMITS.max_image_pixels))
    if grey is not None:
        grey_or_client_error(lambda: mnist_style(grey), side=28)
        grey_or_client_error(lambda: plain_28(grey), side=28)
        grey_or_client_error(lambda: product_style(grey), side=28)


@PROPERTY
@given(st.binary(max_size=400))
def test_decode_image_of_any_bytes(data):
    grey_or_client_error(lambda: decode_image(data, LIMITS.max_image_pixels))


@PROPERTY
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
        elements=st.one_of(st.floats(0, 1, width=32), st.floats(width=32)),
    )
)
def test_preprocessing_of_any_array(grey):
    grey_or_client_error(lambda: mnist_style(grey), side=28)
    grey_or_client_error(lambda: plain_28(grey), side=28)
    grey_or_client_error(lambda: product_style(grey), side=28)


@PROPERTY
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 60), st.integers(1, 60)), elements=st.floats(0, 1, width=32)))
def test_preprocessing_of_any_grey_image_succeeds(grey):
    """Within its domain (2-D, 0..1) preprocessing never refuses."""
    for preprocess in PIPELINES.values():
        out = preprocess(grey)
        assert out.shape == (28, 28) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(["file", "file", "other"]), image_files()), max_size=4), st.booleans())
def test_parse_multipart_of_image_parts(parts, close):
    body = multipart_body(parts, close)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    for preprocess in RULES:
        batch_or_client_error(lambda p=preprocess: parse_multipart(content_type, body, LIMITS, p))


@PROPERTY
@given(
    st.sampled_from(
        [
            "multipart/form-data",
            f"multipart/form-data; boundary={BOUNDARY}",
            "application/json",
            "application/x-npy",
            "APPLICATION/JSON; charset=utf-8",
            "text/plain",
            "",
        ]
    ),
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda parts: multipart_body(parts),
            st.lists(st.tuples(st.just("file"), st.binary(max_size=100)), max_size=3),
        ),
    ),
    st.sampled_from(RULES),
)
def test_read_images_of_any_body(content_type, body, preprocess):
    batch_or_client_error(lambda: read_images(content_type, body, LIMITS, preprocess))


@pytest.mark.parametrize("scale", [1, 255])
def test_a_valid_json_batch_round_trips(scale):
    """The success path the properties rely on: pixels come back scaled to 0..1, unchanged otherwise."""
    images = np.random.default_rng(scale).integers(0, 256, (3, 28, 28)) / (255 / scale)
    body = orjson.dumps({"images": images.tolist(), "pixel_scale": scale})
    np.testing.assert_allclose(parse_json(body, LIMITS), images / scale, atol=1e-6)


PART_NAMES = st.sampled_from(["file", "other", "fïle", "a b", "x" * 40])
PART_BYTES = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"\r\n", b"--", b"\r\n--property", b"--\r\n\r\n", b"a\r\n\r\nb"]),
)


@PROPERTY
@given(st.lists(st.tuples(PART_NAMES, st.none() | st.sampled_from(["a.png", "ü.png", ""]), PART_BYTES), max_size=5))
def test_split_multipart_reads_what_a_streaming_parser_reads(parts):
    """The in-memory splitter gives the parts starlette's streaming multipart parser gives, for bodies
    encoded by a standard client library (urllib3, which requests uses): names, filenames and bytes."""
    import asyncio

    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartParser
    from urllib3 import encode_multipart_formdata

    from app.inputs import split_multipart

    fields = [(name, (file, data) if file is not None else data.decode("latin-1")) for name, file, data in parts]
    body, content_type = encode_multipart_formdata(fields, boundary=BOUNDARY)
    ours = [(p.name, p.filename, p.data) for p in split_multipart(body, BOUNDARY.encode())]

    async def stream():
        yield body

    async def theirs():
        parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=99, max_fields=99)
        form = await parser.parse()
        found = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                found.append((name, value.filename, await value.read()))
            else:
                found.append((name, None, value.encode("latin-1")))
        await form.close()
        return found

    expected = asyncio.run(theirs())
    # starlette decodes text fields as UTF-8 with replacement; compare the file parts' bytes exactly and
    # every part's name and filename
    assert [(n, f) for n, f, _ in ours] == [(n, f) for n, f, _ in expected]
    assert [d for _, f, d in ours if f is not None] == [d for _, f, d in expected if f is not None]
    # and every part's bytes as the encoder wrote them (text fields as UTF-8)
    sent = [data if filename is not None else data.decode("latin-1").encode() for _, filename, data in parts]
    assert [d for _, _, d in ours] == sent


# ---------------------------------------------------------------- .npy headers and whole numbers

SHAPE_SIDES = st.one_of(
    st.integers(-3, 2000),
    st.sampled_from([28, 784, 0, 1]),
    st.integers(2**31, 2**80),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.text(max_size=3),
    st.tuples(st.integers(0, 3)),
)


@st.composite
def npy_headers(draw: st.DrawFn) -> bytes:
    """An ``.npy`` file whose header dict is written by hand: shapes of any Python literals (booleans, floats,
    huge integers, tuples), dtypes and orders of any kind, then some data."""
    shape = draw(st.lists(SHAPE_SIDES, max_size=5))
    if draw(st.booleans()):
        shape = [draw(st.sampled_from([True, 1, 2])), *draw(st.sampled_from([[28, 28], [784], [28, True]]))]
    text = repr(tuple(shape))
    descr = draw(st.sampled_from(["'|u1'", "'<f4'", "'|b1'", "'O'", "1", "None", "'<f8'"]))
    order = draw(st.sampled_from(["False", "True", "0", "'no'"]))
    header = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {text}, }}".encode("latin-1", "replace")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    data = bytes(draw(st.sampled_from([0, 784, 784 * 4, 784 * 8, 2 * 784])))
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


@PROPERTY
@given(npy_headers())
def test_parse_npy_of_any_shape_in_its_header(blob):
    batch_or_client_error(lambda: parse_npy(blob, LIMITS))


VERSION_TEXTS = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), max_size=6),  # every script's digits, ²
    st.from_regex(r"\A[0-9_+\- ]{1,12}\Z"),
    st.integers(0, 2**40).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(0, 20).map(lambda n: "0" * n + "1"),
)


@PROPERTY
@given(VERSION_TEXTS)
def test_versions_and_seeds_are_read_alike_in_paths_and_queries(text):
    """One parser: ASCII digits only, at any length a 404 (path) or 422 (query), never a 500; what a path
    accepts as a version, a query accepts too, as the same number."""
    from urllib.parse import urlencode

    from app.inference import MAX_SEED, MAX_VERSION, parse_params
    from app.protocols.common import version_number

    try:
        in_path = version_number(text)
    except ApiError as error:
        assert error.status == 404 and len(error.message) < 200, error.message
        in_path = None
    query = urlencode({"model": "m", "version": text, "noise_std": "0.5", "seed": text}).encode()
    try:
        params = parse_params(query, denoise=True)
    except ApiError as error:
        assert error.status == 422 and len(error.message) < 200, error.message
        params = None
    digits = text.lstrip("0") or "0"
    plain = text.isascii() and text.isdigit() and len(digits) <= 10  # else above every bound: refused
    if in_path is not None:
        assert plain and in_path == int(digits) <= MAX_VERSION
    if params is not None:
        assert plain and params.version == params.seed == int(digits) and params.seed <= MAX_SEED
    if plain and 1 <= int(digits) <= MAX_VERSION:
        assert in_path == params.version == int(digits)
