"""Request bodies in every input form, made the way a client makes them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from scripts.api_examples import draw_digit


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def png_bytes(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def as_json(images: np.ndarray, flat: bool = False) -> dict:
    """uint8 images as the JSON input form, 0..1 nested (default) or 0..255 flat."""
    if flat:
        return {"images": images.reshape(len(images), -1).astype(int).tolist(), "pixel_scale": 255}
    return {"images": (images / 255.0).tolist()}


def photo_of_digit(digit: int, seed: int = 0) -> bytes:
    """A digit (0, 1 or 7) drawn dark on a light 300x200 background with noise, as PNG bytes."""
    return png_bytes(draw_digit(digit, seed))


def multipart(*files: bytes, name: str = "file", kind: str = "image/png") -> dict:
    return {"files": [(name, (f"image{i}.png", data, kind)) for i, data in enumerate(files)]}


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """A JPEG file as (marker, bytes) segments, each scan with its entropy-coded data."""
    segments, at = [], 2
    while data[at + 1] != 0xD9:
        marker, end = data[at + 1], at + 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is no stuffed 0xFF or restart
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
        segments.append((marker, data[at:end]))
        at = end
    return segments


def many_scans_jpeg(side: int = 4000, size: int = 125_000) -> bytes:
    """A progressive grey JPEG of ``side`` x ``side`` blank pixels, ``size`` bytes long: its DC scan, then one
    small AC scan repeated thousands of times. libjpeg passes over every block once per scan: seconds of CPU."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="JPEG", progressive=True)
    segments = _jpeg_segments(buffer.getvalue())
    head = b"\xff\xd8" + b"".join(data for marker, data in segments if marker != 0xDA)
    scans = [data for marker, data in segments if marker == 0xDA]
    repeated = min(scans[1:], key=len)
    count = (size - len(head) - len(scans[0]) - 2) // len(repeated)
    return head + scans[0] + repeated * count + b"\xff\xd9"


def blank_png16(side: int = 4000) -> bytes:
    """A blank 16-bit grey PNG of ``side`` x ``side``: some 30 KB that inflate to 32 MB."""
    return png_bytes(Image.fromarray(np.zeros((side, side), np.uint16)))
