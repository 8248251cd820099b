"""Output forms: JSON (orjson, numpy arrays serialised natively), ``.npy`` and PNG, chosen by ``Accept``."""

from __future__ import annotations

import io

import numpy as np
import orjson

from app.errors import ApiError, brief
from app.imaging import to_png

JSON, NPY, PNG = "application/json", "application/x-npy", "image/png"


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """The offered media type the ``Accept`` header prefers (JSON when absent); else 406.

    A wildcard (``*/*``, ``application/*``, ``image/*``) takes JSON where it matches, else the first
    offered type it matches; a type named with ``q=0`` is refused even where a wildcard matches it.
    """
    if not accept or not accept.strip():
        return JSON
    ranges, refused = [], set()
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        media, quality = media.lower(), 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranges.append((-quality, position, media))
        elif not media.endswith("/*"):
            refused.add(media)
    preference = (JSON, *(media for media in offered if media != JSON))
    for _, _, media in sorted(ranges):
        if media.endswith("/*"):
            kind = media.split("/")[0]
            matched = [m for m in preference if m in offered and (kind == "*" or m.startswith(kind + "/"))]
        else:
            matched = [media] if media in offered else []
        for candidate in matched:
            if candidate not in refused:
                return candidate
    raise ApiError(406, f"cannot answer with {brief(accept)}; this endpoint offers " + ", ".join(offered))


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
