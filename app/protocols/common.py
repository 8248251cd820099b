"""What both protocols share: the size-limited JSON body, model lookup by path, tensors to an image batch."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response

from app.errors import ApiError, brief
from app.inference import MAX_VERSION, ClientGoneError, read_body
from app.inputs import Limits, check_batch, image_count, whole_number
from app.registry import Registry, ServedModel
from app.responses import JSON, json_body

# The numpy dtypes of the signatures' tensors, by the names each protocol gives them.
TF_DTYPES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "int64": "DT_INT64"}
V2_DTYPES = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64"}


async def read_raw(request: Request) -> bytes:
    """The request body, never empty; refused with 413 while it streams past the body limit."""
    limits: Limits = request.app.state.limits
    length = request.headers.get("content-length")
    try:
        body = await read_body(request.receive, length.encode("latin-1") if length else None, limits.max_body_bytes)
    except ClientGoneError:
        raise ApiError(400, "the request body did not arrive") from None
    if not body:
        raise ApiError(400, "request body is empty")
    return body


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON (:func:`read_raw`'s checks first).

    The content type is not checked: TF Serving's own examples post with ``curl -d``, which
    labels the body as a form.
    """
    body = await read_raw(request)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON ({exc.msg})") from None


def find_model(registry: Registry, name: str, version: str | None) -> ServedModel:
    """The loaded model a protocol path names (newest version unless one is given), or 404/503."""
    if version is None:
        return registry.get(name)
    return registry.get(name, version_number(version))


def version_number(version: str) -> int:
    """A protocol path's version (``3``, ``03``), or 404: versions are whole numbers in ASCII digits."""
    number = whole_number(version, MAX_VERSION)
    if number is None or number > MAX_VERSION:
        raise ApiError(
            404, f"model versions are whole numbers in ASCII digits, up to {MAX_VERSION}; not {brief(version)}"
        )
    return number


def answer(payload: dict, model: ServedModel) -> Response:
    """A JSON answer naming the model version that computed it, as the five endpoints' answers do."""
    headers = {"X-Model": model.name, "X-Model-Version": str(model.version)}
    return Response(json_body(payload), 200, headers=headers, media_type=JSON)


def as_images(values: Any, limits: Limits, what: str, scale: float = 1.0) -> np.ndarray:
    """Nested lists of numbers shaped as an image batch (N,28,28), (N,28,28,1) or (N,784) → the checked batch."""
    try:
        array = np.array(values, dtype=np.float32)
    except (ValueError, TypeError):
        raise ApiError(400, f"{what} must hold numbers only, in lists of equal length") from None
    if np.isnan(array).any():  # JSON has no NaN: these were nulls
        raise ApiError(422, f"{what} holds nulls; every pixel must be a number")
    image_count(array.shape, what)
    return check_batch(array.reshape(-1, 28, 28), limits, scale)


def b64_file(encoded: Any) -> bytes:
    """``{"b64": ...}``'s base64 image file (PNG, JPEG, ...) as bytes, to decode as an upload is
    (:func:`app.inputs.decode_files`)."""
    if not isinstance(encoded, str):
        raise ApiError(400, '"b64" must be a string of base64 image file bytes')
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, '"b64" is not valid base64') from None
    if len(data) == 0:
        raise ApiError(400, '"b64" holds no bytes')
    return data


def tensor_shape(model: ServedModel, name: str) -> list[int]:
    """An output's shape from the manifest, variable dimensions as -1."""
    return [int(d) for d in model.manifest["outputs"][name]["shape"]]
