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
