"""Output forms: JSON (orjson, numpy arrays serialised natively), ``.npy`` and PNG, chosen by ``Accept``."""

from __future__ import annotations

import io

import numpy as np
import orjson

from app.errors import ApiError
from app.imaging import to_png

JSON, NPY, PNG = "application/json", "application/x-npy", "image/png"


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """The offered media type the ``Accept`` header prefers (JSON when absent or a wildcard); else 406."""
    if not accept or not accept.strip():
        return JSON
    ranges = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranges.append((-quality, position, media.lower()))
    for _, _, media in sorted(ranges):
        if media in offered:
            return media
        if media in ("*/*", "application/*"):
            return JSON
        if media == "image/*" and PNG in offered:
            return PNG
    raise ApiError(406, f"cannot answer with {accept}; this endpoint offers " + ", ".join(offered))


def json_body(payload: dict) -> bytes:
    """A JSON body; numpy arrays inside ``payload`` are serialised without conversion to lists."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def npy_body(array: np.ndarray) -> bytes:
    """The array itself as a ``.npy`` file (float32)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def image_body(images: np.ndarray, media: str) -> tuple[bytes, str]:
    """A batch of images in the negotiated form: ``.npy`` or PNG (one image, or a grid of a batch)."""
    return (npy_body(images), NPY) if media == NPY else (to_png(images), PNG)
