"""Image files in, 28x28 grey arrays out (and back to PNG), the way MNIST was made."""

from __future__ import annotations

import io
import math
import struct
import threading
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

import imageprep
from app.errors import ApiError

SIDE = imageprep.SIDE
# Lanczos resize as Pillow computes it (imageprep.resize): one implementation for the service and the training.
_resize = imageprep.resize
# Decoding a huge photo costs more than its MNIST-sized result needs: shrink first.
WORKING_SIZE = 512
# Formats whose orientation tag may be read only from the decoded file; others carry EXIF in image.info.
EXIF_FORMATS = ("TIFF", "MPO", "WEBP")
# The formats of the contract (Pillow's JPEG plugin also opens MPO, the multi-picture JPEG of phones).
# Pillow's other plugins (EPS runs Ghostscript, PSD, ICNS, FITS, ...) are never offered a client's bytes.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
ACCEPTED = "PNG, JPEG, BMP, GIF, WebP, TIFF"
# Scans of one JPEG beyond which it is refused unread (libjpeg passes over every block of the image once per scan).
MAX_SCANS = 64
# Pillow's decompression-bomb limit is process-wide: set to the caller's limit only while a file is opened.
_OPEN_LOCK = threading.Lock()
# Modes with no conversion to L in Pillow: their lightness channel is the grey image.
LIGHTNESS = {"LAB": "L", "HSV": "V"}


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
DEEP_MODES = (*SIXTEEN_BIT_MODES, "I", "F")  # more than 8 bits a pixel


def _integer_or_float_scale(mode: str, largest: float) -> float:
    """What white is in a 32-bit image: 1 for floats in 0..1 (mode F), else 255 or, above that, 65535."""
    if mode == "F" and largest <= 1.0:
        return 1.0
    return 65535.0 if largest > 255 else 255.0


def _to_grey(image: Image.Image) -> np.ndarray:
    """Any Pillow mode to a float32 grey array in 0..1 (transparency composited onto white)."""
    if image.mode == "L":  # most uploads: no conversion, no copy before the scaling
        return np.asarray(image, dtype=np.float32) / np.float32(255.0)
    if image.mode in SIXTEEN_BIT_MODES:
        return np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():  # float TIFFs can hold NaN or Inf: no grey value fits them
            raise ApiError(422, "image holds NaN or infinite pixel values")
        return np.clip(values / _integer_or_float_scale(image.mode, values.max(initial=0)), 0.0, 1.0)
    if image.mode in LIGHTNESS:
        return np.asarray(image.getchannel(LIGHTNESS[image.mode]), dtype=np.float32) / 255.0
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


# Pillow's decompression-bomb warning is an error in this process: decode_image answers it with a 413.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (reading EXIF costs as much as decoding: only if any)."""
    if "exif" in image.info or image.format in EXIF_FORMATS:
        return ImageOps.exif_transpose(image)
    return image


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """An image file opened (its header read, nothing decoded), or :class:`ApiError` 400 for bytes that are no
    image of the accepted formats and 413 for an image over ``max_pixels``.

    Pillow's decompression-bomb limit, a process-wide setting, is ``max_pixels`` while the file is
    opened (so a larger setting is honoured), under a lock, since decoders run on several threads.
    """
    try:
        with _OPEN_LOCK:
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                image = Image.open(io.BytesIO(data), formats=FORMATS)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image too large to decode; the limit is {max_pixels} pixels ({exc})") from None
    except UnidentifiedImageError:
        raise ApiError(400, f"a file part is not an image of the accepted formats: {ACCEPTED}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types (struct.error, IndexError, ...)
        raise ApiError(400, f"image file is truncated or corrupt ({type(exc).__name__})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def jpeg_scans(data: bytes) -> int:
    """An upper bound of the scans of a JPEG file: its start-of-scan markers (entropy-coded data never holds
    one: a 0xFF byte there is followed by 0x00 or a restart marker)."""
    return data.count(b"\xff\xda")


# Adam7's passes: (first column, first row, column step, row step).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_data_size(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """The bytes a PNG's image data inflates to: each row's pixels and its filter byte, per pass if interlaced."""
    bits = depth * PNG_CHANNELS.get(colour, 4)
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-columns * bits // 8))
    return total


def check_png_data(data: bytes) -> None:
    """400 for a PNG whose image data (its IDAT chunks) inflates to less than its header's size needs.

    Pillow's decoder stops where the compressed stream ends and leaves the rest of the image blank; a
    header claiming 1x16,000,000 pixels with 1,000 bytes of data would be read as a blank image. Only the
    bytes the header needs are inflated (and not kept), in slices of 1 MiB.
    """
    view, at, need, inflated = memoryview(data), 8, None, 0
    inflater = zlib.decompressobj()
    try:
        while at + 8 <= len(data):
            length, kind = struct.unpack_from(">I4s", data, at)
            chunk = view[at + 8 : at + 8 + length]
            at += 12 + length
            if kind == b"IHDR" and len(chunk) >= 13:
                width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", chunk)
                need = _png_data_size(width, height, depth, colour, interlace == 1)
            elif kind == b"IDAT" and need is not None:
                pending = bytes(chunk)
                while inflated < need and not inflater.eof:
                    out = inflater.decompress(pending, 2**20)
                    inflated += len(out)
                    pending = inflater.unconsumed_tail
                    if not out and not pending:  # this chunk's data is spent (output held back is drained first)
                        break
            elif kind == b"IEND" or (kind != b"IDAT" and inflated):
                break  # the first frame's data ends where other chunks begin (APNG's frames follow)
    except zlib.error:
        raise ApiError(400, "image file is truncated or corrupt (its PNG image data is not a zlib stream)") from None
    if need is not None and inflated < need:
        raise ApiError(
            400, f"image file is truncated: its PNG data holds {inflated} of the {need} bytes its header declares"
        )


def decode_image(data: bytes, max_pixels: int, max_scans: int = MAX_SCANS) -> np.ndarray:
    """Decode one image file's first frame to grey 0..1, refusing oversized or costly images before decoding.

    Raises :class:`ApiError` 400 for bytes that are not an image of the accepted formats (or are
    truncated or corrupt), 413 for images over ``max_pixels`` (checked on the header, see
    :func:`open_image`), 422 for a JPEG of more than ``max_scans`` scans and for float images holding
    NaN or Inf. The result is always finite.
    """
    image = open_image(data, max_pixels)
    if image.format in ("JPEG", "MPO") and (scans := jpeg_scans(data)) > max_scans:
        raise ApiError(422, f"JPEG file has {scans} scans; the limit is {max_scans} (AESERVE_MAX_IMAGE_SCANS)")
    if image.format == "PNG":
        check_png_data(data)
    width, height = image.size
    try:
        image.seek(0)
        deep = image.mode in DEEP_MODES
        if deep:
            # grey 0..1 at full size, where white is read: a shrink's overshoot must not change it, and
            # Pillow shrinks 16-bit big-endian pixels wrongly (the new image has no EXIF: upright first)
            image = Image.fromarray(_to_grey(_upright(image)), "F")
        if max(width, height) > WORKING_SIZE:
            image.draft("L", (WORKING_SIZE, WORKING_SIZE))
            image.thumbnail((WORKING_SIZE, WORKING_SIZE))
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) if deep else _to_grey(_upright(image))
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image too large to decode; the limit is {max_pixels} pixels ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types (struct.error, IndexError, ...)
        raise ApiError(400, f"image file is truncated or corrupt ({type(exc).__name__})") from None


def _check_grey(grey: np.ndarray) -> None:
    """A grey image to preprocess: 2-D with at least one pixel, all finite; else 422. (:func:`decode_image`
    makes them so; an array from elsewhere is checked.)"""
    if grey.ndim != 2 or grey.size == 0:
        raise ApiError(422, f"image has shape {grey.shape}; expected at least one row and column of pixels")
    if not np.isfinite(grey).all():
        raise ApiError(422, "image holds NaN or infinite pixel values")


def plain_28(grey: np.ndarray) -> np.ndarray:
    """Only resize to 28x28 (``preprocess=none``)."""
    _check_grey(grey)
    return _resize(grey, SIDE, SIDE).clip(0.0, 1.0)


def mnist_style(grey: np.ndarray) -> np.ndarray:
    """MNIST's own normalisation (:func:`imageprep.mnist_style`, the training's ``--preprocess mnist`` too):
    light ink on black, cropped, fitted to 20x20, centred by mass in 28x28; 422 for an empty or non-finite array."""
    _check_grey(grey)
    return imageprep.mnist_style(grey)


def to_png(images: np.ndarray) -> bytes:
    """One 28x28 image as a PNG, or a batch as a grid (2-pixel gaps, near-square)."""
    pixels = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if len(pixels) == 1:
        sheet = pixels[0]
    else:
        cols = math.ceil(math.sqrt(len(pixels)))
        rows = math.ceil(len(pixels) / cols)
        sheet = np.zeros((rows * (SIDE + 2) - 2, cols * (SIDE + 2) - 2), np.uint8)
        for i, image in enumerate(pixels):
            r, c = divmod(i, cols)
            sheet[r * (SIDE + 2) : r * (SIDE + 2) + SIDE, c * (SIDE + 2) : c * (SIDE + 2) + SIDE] = image
    buffer = io.BytesIO()
    Image.fromarray(sheet, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
