"""MNIST-style preprocessing of uploaded images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from helpers import photo_of_digit, png_bytes
from PIL import Image

from app.errors import ApiError
from app.imaging import ADAM7, decode_image, mnist_style, plain_28, to_png


def test_light_background_is_inverted_cropped_fitted_and_centred():
    page = np.ones((200, 300), np.float32)
    page[50:150, 200:220] = 0.0  # a dark vertical bar, off-centre, on white
    out = mnist_style(page)
    assert out.shape == (28, 28) and out.dtype == np.float32
    assert out.max() == pytest.approx(1.0, abs=0.05) and out[0].max() == 0 and out[:, 0].max() == 0
    rows, _ = np.nonzero(out > 0.5)
    assert rows.max() - rows.min() + 1 == 20  # the longer side fits 20 pixels
    ys, xs = np.indices(out.shape)
    assert (ys * out).sum() / out.sum() == pytest.approx(14, abs=1)
    assert (xs * out).sum() / out.sum() == pytest.approx(14, abs=1)


def test_dark_background_is_kept():
    image = np.zeros((28, 28), np.float32)
    image[4:24, 12:16] = 1.0
    out = mnist_style(image)
    assert out[14, 14] > 0.5 and out[0, 0] == 0


def test_blank_image_stays_blank():
    assert mnist_style(np.full((50, 50), 0.8, np.float32)).max() == 0


def test_plain_resize_only():
    out = plain_28(np.full((56, 56), 0.5, np.float32))
    assert out.shape == (28, 28) and np.allclose(out, 0.5, atol=1e-3)


def test_photo_decodes_to_grey():
    grey = decode_image(photo_of_digit(1), max_pixels=10**6)
    assert grey.shape == (200, 300) and grey.min() >= 0 and grey.max() <= 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_every_pillow_mode_becomes_grey(mode):
    base = Image.fromarray(np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (28, 1)))
    image = base.convert("I").point(lambda v: v * 257).convert("I;16") if mode == "I;16" else base.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    grey = decode_image(png_bytes(image, fmt), max_pixels=10**6)
    assert grey.shape == (28, 28) and grey.dtype == np.float32
    assert grey.min() >= 0 and grey.max() <= 1


@pytest.mark.parametrize("size", [(300, 200), (900, 600)], ids=["as-is", "shrunk"])
@pytest.mark.parametrize(
    "deep",
    [
        lambda grey: Image.fromarray((grey.astype(np.uint16) * 257).astype(">u2")),  # I;16B
        lambda grey: Image.fromarray(grey.astype(np.uint16) * 257),  # I;16
        lambda grey: Image.fromarray(grey.astype(np.float32) / 255, "F"),  # floats in 0..1
        lambda grey: Image.fromarray(grey.astype(np.float32), "F"),  # floats in 0..255
        lambda grey: Image.fromarray(grey.astype(np.int32) * 257, "I"),
    ],
    ids=["16-bit-big-endian", "16-bit", "float-0-1", "float-0-255", "32-bit-integer"],
)
def test_deep_tiffs_decode_as_their_8_bit_twin(deep, size):
    # a TIFF of more than 8 bits a pixel is the same picture: its white is read at full size (before a
    # shrink to the working size, whose overshoot could change it), and no byte order scrambles it
    twin = Image.fromarray(np.asarray(Image.open(io.BytesIO(photo_of_digit(7))).convert("L").resize(size)))
    expected = decode_image(png_bytes(twin), max_pixels=10**6)
    grey = decode_image(png_bytes(deep(np.asarray(twin)), "TIFF"), max_pixels=10**6)
    assert grey.shape == expected.shape and grey.dtype == np.float32
    assert np.abs(grey - expected).max() < 0.02


@pytest.mark.parametrize("mode", ["L", "I;16B", "F"])
def test_exif_orientation_of_a_tiff_turns_it_whatever_its_depth(mode):
    tall = np.zeros((40, 20), np.uint8)
    tall[:10] = 255  # white at the top: turned 90° clockwise for display, white is on the right
    image = {"L": Image.fromarray(tall), "I;16B": Image.fromarray((tall.astype(np.uint16) * 257).astype(">u2"))}.get(
        mode, Image.fromarray(tall.astype(np.float32) / 255, "F")
    )
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", exif=exif)
    grey = decode_image(buffer.getvalue(), max_pixels=10**6)
    assert grey.shape == (20, 40)
    assert grey[:, -10:].min() == 1.0 and grey[:, :30].max() == 0.0


def test_transparent_background_counts_as_white():
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[5:20, 10:14] = (0, 0, 0, 255)  # opaque black ink, the rest fully transparent
    grey = decode_image(png_bytes(Image.fromarray(rgba, "RGBA")), max_pixels=10**6)
    assert grey[0, 0] == 1.0 and grey[10, 12] == 0.0


def test_oversized_image_refused_before_decoding():
    with pytest.raises(ApiError) as info:
        decode_image(png_bytes(np.zeros((300, 300), np.uint8)), max_pixels=50_000)
    assert info.value.status == 413


def test_grid_png():
    images = np.random.default_rng(0).random((10, 28, 28)).astype(np.float32)
    grid = Image.open(io.BytesIO(to_png(images)))
    assert grid.size == (4 * 30 - 2, 3 * 30 - 2)


def test_resize_is_pillows_lanczos():
    """The numpy resampling gives Pillow's own LANCZOS resize of a float image, to the last bit or one."""
    from PIL import Image

    from app.imaging import _resize

    rng = np.random.default_rng(3)
    for _ in range(300):
        rows, cols = (int(n) for n in rng.integers(1, 80, 2))
        width, height = (int(n) for n in rng.integers(1, 40, 2))
        grey = rng.random((rows, cols), dtype=np.float32)
        expected = np.asarray(Image.fromarray(grey).resize((width, height), Image.Resampling.LANCZOS))
        got = _resize(grey, width, height)
        assert got.shape == (height, width) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=2.5e-7)


def grey_png(pixels: np.ndarray, rows_sent: int | None = None, interlaced: bool = False) -> bytes:
    """A grey PNG written by hand: its rows (Adam7's passes when ``interlaced``) with filter 0, in one complete
    zlib stream that holds only the first ``rows_sent`` rows when given."""
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    rows = [b"\x00" + row.tobytes() for x0, y0, dx, dy in passes for row in pixels[y0::dy, x0::dx] if row.size]
    height, width = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, int(interlaced))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = zlib.compress(b"".join(rows[:rows_sent]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.mark.parametrize("interlaced", [False, True])
def test_a_png_whose_data_ends_early_is_refused_not_read_blank(interlaced):
    pixels = np.random.default_rng(3).integers(0, 256, (37, 29)).astype(np.uint8)
    whole = decode_image(grey_png(pixels, interlaced=interlaced), 10**6)
    np.testing.assert_allclose(whole, pixels / 255.0, atol=1e-6)  # the hand-written file is read whole
    with pytest.raises(ApiError) as info:  # Pillow alone would read the missing rows as black
        decode_image(grey_png(pixels, rows_sent=20, interlaced=interlaced), 10**6)
    assert info.value.status == 400 and "truncated" in info.value.message
