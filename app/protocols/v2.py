"""The Open Inference Protocol (KServe V2) over HTTP, JSON tensors.

Health (``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]/ready``),
server and model metadata (``/v2``, ``/v2/models/{name}[/versions/{v}]``) and inference
(``POST /v2/models/{name}[/versions/{v}]/infer``), as
https://github.com/kserve/open-inference-protocol describes them. The one input is ``images``
(a request's one input tensor is taken as it whatever its name, as KServe's scikit-learn and
XGBoost servers do, so clients written for another model's input name work unchanged):
``FP32``/``FP64``/``FP16`` pixels in 0..1 or ``UINT8`` pixels in 0..255, shaped ``[N,28,28]``,
``[N,28,28,1]`` or ``[N,784]``, data flat or nested. ``outputs`` picks outputs by name (all by
default) and only those are computed; ``id`` is echoed. A server or model that is not ready
answers 503 (the protocol asks only for a non-200 status), as ``/readyz`` does.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app import __version__
from app.dependencies import get_registry
from app.errors import ApiError, brief
from app.inputs import Limits, image_count
from app.protocols.common import V2_DTYPES, answer, as_images, find_model, read_json, tensor_shape
from app.registry import Registry, ServedModel
from app.responses import JSON, json_body
from app.schemas import ErrorResponse

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])
Registered = Annotated[Registry, Depends(get_registry)]

INPUT = "images"
# Accepted input datatypes and the value that stands for white.
SCALES = {"FP32": 1.0, "FP64": 1.0, "FP16": 1.0, "UINT8": 255.0}
# The model format each runtime serves, as Triton names them.
PLATFORMS = {"litert": "tflite", "tensorflow": "tensorflow_savedmodel"}
ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": {"type": "object"}},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "example": {
                    "id": "42",
                    "inputs": [{"name": INPUT, "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}],
                    "outputs": [{"name": "codes"}],
                },
            }
        },
    }
}


def _json(payload: dict, status: int = 200) -> Response:
    return Response(json_body(payload), status, media_type=JSON)


def _datatype(dtype: str) -> str:
    return V2_DTYPES.get(dtype, dtype.upper())


def _metadata(registry: Registry, model: ServedModel) -> dict:
    outputs = [
        {"name": key, "datatype": _datatype(spec["dtype"]), "shape": tensor_shape(model, key)}
        for key, spec in model.manifest["outputs"].items()
    ]
    return {
        "name": model.name,
        "versions": [str(v) for v in sorted(registry.models.get(model.name, {}))],
        "platform": PLATFORMS[registry.runtime],
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 28, 28]}],
        "outputs": outputs,
    }


def _input(body: Any, limits: Limits) -> np.ndarray:
    """The request's one input tensor as an image batch; 400 (the protocol's error status) when malformed."""
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be an inference request object with "inputs"')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f'"inputs" must be a list of one tensor object, the "{INPUT}" input')
    tensor = inputs[0]
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
    if missing:
        raise ApiError(400, f"the input tensor lacks {', '.join(missing)}")
    if not isinstance(tensor["name"], str):
        raise ApiError(400, '"name" of the input tensor must be a string')
    datatype, shape, data = tensor["datatype"], tensor["shape"], tensor["data"]
    if not isinstance(datatype, str) or datatype not in SCALES:
        raise ApiError(400, f"datatype {brief(datatype)} is not accepted; send {', '.join(SCALES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ApiError(400, '"shape" must be a list of non-negative integers')
    if not isinstance(data, list):
        raise ApiError(400, '"data" must be a list (flat or nested) of numbers')
    count = math.prod(shape)
    if count > limits.max_batch * 784:
        raise ApiError(413, f"shape {shape} holds more than {limits.max_batch} images")
    try:
        array = np.array(data, dtype=np.float32)
    except (ValueError, TypeError):
        raise ApiError(400, '"data" must hold numbers only, nested in lists of equal length') from None
    if array.size != count:
        raise ApiError(400, f'"data" holds {array.size} values; shape {shape} needs {count}')
    image_count(tuple(shape), "the images tensor")  # 422 for what is no image batch, before numpy's rank limit
    if datatype == "UINT8" and (np.isfinite(array) & (array != np.round(array))).any():
        raise ApiError(422, "UINT8 data must hold whole numbers 0..255; send FP32 for fractions of 0..1")
    return as_images(array.reshape(shape), limits, "the images tensor", SCALES[datatype])


def _requested(body: dict, model: ServedModel) -> tuple[str, ...]:
    wanted = body.get("outputs")
    if wanted is None:
        return tuple(sorted(model.output_names))
    if not isinstance(wanted, list) or not wanted or not all(isinstance(o, dict) and "name" in o for o in wanted):
        raise ApiError(400, '"outputs" must be a list of objects with a "name"')
    if not all(isinstance(o["name"], str) for o in wanted):
        raise ApiError(400, 'each "name" in "outputs" must be a string')
    names = [o["name"] for o in wanted]
    unknown = [n for n in names if n not in model.output_names]
    if unknown:
        raise ApiError(400, f"unknown outputs {unknown}; the model has {model.output_names}")
    return tuple(sorted(set(names)))


async def _infer(request: Request, registry: Registry, name: str, version: str | None) -> Response:
    model = find_model(registry, name, version)
    body = await read_json(request)
    images = _input(body, request.app.state.limits)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, '"id" must be a string')
    keys = _requested(body, model)
    results = await model.run_outputs(images, keys)
    outputs = [
        {
            "name": key,
            "shape": list(results[key].shape),
            "datatype": _datatype(str(results[key].dtype)),
            "data": results[key].ravel(),
        }
        for key in keys
    ]
    payload: dict = {"model_name": model.name, "model_version": str(model.version)}
    if request_id is not None:
        payload["id"] = request_id
    payload["outputs"] = outputs
    return answer(payload, model)


def _model_ready(registry: Registry, name: str, version: str | None) -> Response:
    model = find_model(registry, name, version)  # 404 unknown, 503 loading or failed
    return _json({"name": model.name, "ready": True})


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return _json({"name": "aeserve", "version": __version__, "extensions": []})


@router.get("/health/live", summary="Server live")
async def server_live() -> Response:
    return _json({"live": True})


@router.get("/health/ready", summary="Server ready: every model loaded", responses={503: {"model": ErrorResponse}})
async def server_ready(registry: Registered) -> Response:
    if not registry.ready:
        return _json({"ready": False, "error": registry.not_ready_reason()}, 503)
    return _json({"ready": True})


@router.get("/models/{name}", summary="Model metadata", responses=ERRORS)
async def model_metadata(name: str, registry: Registered) -> Response:
    return _json(_metadata(registry, find_model(registry, name, None)))


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version", responses=ERRORS)
async def version_metadata(name: str, version: str, registry: Registered) -> Response:
    return _json(_metadata(registry, find_model(registry, name, version)))


@router.get("/models/{name}/ready", summary="Model ready", responses=ERRORS)
async def model_ready(name: str, registry: Registered) -> Response:
    return _model_ready(registry, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready", responses=ERRORS)
async def version_ready(name: str, version: str, registry: Registered) -> Response:
    return _model_ready(registry, name, version)


@router.post("/models/{name}/infer", summary="Inference", responses=ERRORS, openapi_extra=INFER_BODY)
async def infer(name: str, request: Request, registry: Registered) -> Response:
    return await _infer(request, registry, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference with one version",
    responses=ERRORS,
    openapi_extra=INFER_BODY,
)
async def infer_version(name: str, version: str, request: Request, registry: Registered) -> Response:
    return await _infer(request, registry, name, version)
