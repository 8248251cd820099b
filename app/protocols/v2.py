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

The binary tensor data extension (as KServe and Triton define it) is read and written: an input
whose ``parameters.binary_data_size`` is set has its bytes after the JSON head, whose length the
``Inference-Header-Content-Length`` header gives; outputs asked for with ``parameters.binary_data``
(or all, with the request's ``binary_data_output``) are answered the same way. The tensor checks
here serve the gRPC form too (:mod:`app.protocols.grpc_v2`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app import __version__
from app.dependencies import get_registry
from app.errors import ApiError, brief
from app.inputs import Limits, check_batch, image_count
from app.protocols.common import V2_DTYPES, answer, as_images, find_model, read_raw, tensor_shape
from app.registry import Registry, ServedModel
from app.responses import JSON, json_body
from app.schemas import ErrorResponse

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])
Registered = Annotated[Registry, Depends(get_registry)]

INPUT = "images"
# Accepted input datatypes and the value that stands for white.
SCALES = {"FP32": 1.0, "FP64": 1.0, "FP16": 1.0, "UINT8": 255.0}
# The binary (and raw gRPC) form of each accepted datatype: little-endian, as the protocol lays it out.
BINARY_DTYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2"), "UINT8": np.dtype("u1")}
HEADER_LENGTH = "inference-header-content-length"
BINARY = "application/octet-stream"
EXTENSIONS = ["binary_tensor_data"]
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


def describe(registry: Registry, model: ServedModel) -> dict:
    """A model's metadata as the protocol gives it: versions, platform, the input and every output."""
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


def tensor_count(datatype: Any, shape: Any, limits: Limits) -> int:
    """The elements a tensor's ``datatype`` and ``shape`` declare, checked before anything is allocated:
    400 when malformed, 413 beyond ``limits``' images."""
    if not isinstance(datatype, str) or datatype not in SCALES:
        raise ApiError(400, f"datatype {brief(datatype)} is not accepted; send {', '.join(SCALES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ApiError(400, '"shape" must be a list of non-negative integers')
    count = math.prod(shape)
    if count > limits.max_batch * 784:
        raise ApiError(413, f"shape {brief(shape)} holds more than {limits.max_batch} images")
    return count


def images_from_bytes(datatype: Any, shape: Any, data: bytes | memoryview, limits: Limits, what: str) -> np.ndarray:
    """A tensor's bytes (binary data extension, gRPC raw contents) as an image batch; no copy before the
    float32 batch. ``data`` must hold exactly the tensor: 400 otherwise."""
    count = tensor_count(datatype, shape, limits)
    dtype = BINARY_DTYPES[datatype]
    if len(data) != count * dtype.itemsize:
        needed = count * dtype.itemsize
        raise ApiError(400, f"{what} is {len(data)} bytes; shape {brief(shape)} of {datatype} needs {needed}")
    image_count(tuple(shape), "the images tensor")  # 422 for what is no image batch
    array = np.frombuffer(data, dtype=dtype, count=count)
    return check_batch(array.reshape(-1, 28, 28), limits, SCALES[datatype])


def images_from_values(datatype: Any, shape: Any, values: Any, limits: Limits) -> np.ndarray:
    """A tensor's numbers (JSON ``data``, flat or nested; gRPC typed contents) as an image batch."""
    count = tensor_count(datatype, shape, limits)
    try:
        array = np.array(values, dtype=np.float32)
    except (ValueError, TypeError):
        raise ApiError(400, '"data" must hold numbers only, nested in lists of equal length') from None
    if array.size != count:
        raise ApiError(400, f'"data" holds {array.size} values; shape {shape} needs {count}')
    image_count(tuple(shape), "the images tensor")  # 422 for what is no image batch, before numpy's rank limit
    if datatype == "UINT8" and (np.isfinite(array) & (array != np.round(array))).any():
        raise ApiError(422, "UINT8 data must hold whole numbers 0..255; send FP32 for fractions of 0..1")
    return as_images(array.reshape(shape), limits, "the images tensor", SCALES[datatype])


def _binary_size(tensor: dict) -> int | None:
    """The input's ``parameters.binary_data_size``, or ``None`` when its data is JSON."""
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ApiError(400, '"parameters" of the input tensor must be an object')
    size = parameters.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ApiError(400, f"binary_data_size must be a byte count, not {brief(size)}")
    return size


def _input(body: Any, binary: memoryview, limits: Limits) -> np.ndarray:
    """The request's one input tensor as an image batch; 400 (the protocol's error status) when malformed."""
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be an inference request object with "inputs"')
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f'"inputs" must be a list of one tensor object, the "{INPUT}" input')
    tensor = inputs[0]
    size = _binary_size(tensor)
    needed = ("name", "shape", "datatype") if size is not None else ("name", "shape", "datatype", "data")
    missing = [key for key in needed if key not in tensor]
    if missing:
        raise ApiError(400, f"the input tensor lacks {', '.join(missing)}")
    if not isinstance(tensor["name"], str):
        raise ApiError(400, '"name" of the input tensor must be a string')
    datatype, shape = tensor["datatype"], tensor["shape"]
    if size is None:
        if len(binary):
            raise ApiError(400, f"{len(binary)} bytes follow the JSON head, and no input has a binary_data_size")
        if not isinstance(tensor["data"], list):
            raise ApiError(400, '"data" must be a list (flat or nested) of numbers')
        return images_from_values(datatype, shape, tensor["data"], limits)
    if "data" in tensor:
        raise ApiError(400, 'the input tensor has both "data" and a binary_data_size; send one')
    tensor_count(datatype, shape, limits)  # a malformed or oversized tensor says so before the sizes do
    if size != len(binary):
        header = "" if len(binary) else " (binary data needs the Inference-Header-Content-Length header)"
        raise ApiError(400, f"binary_data_size is {size}, and {len(binary)} bytes follow the JSON head{header}")
    return images_from_bytes(datatype, shape, binary, limits, "binary_data_size")


def _split(body: bytes, header: str | None) -> tuple[memoryview, memoryview]:
    """The JSON head and the binary data after it, as ``Inference-Header-Content-Length`` divides the body."""
    view = memoryview(body)
    if header is None:
        return view, view[len(view) :]
    if not (header.isascii() and header.isdigit()):
        raise ApiError(400, f"Inference-Header-Content-Length must be a byte count, not {brief(header)}")
    length = int(header)
    if not 0 < length <= len(body):
        raise ApiError(400, f"Inference-Header-Content-Length is {length}; the body has {len(body)} bytes")
    return view[:length], view[length:]


def _flag(parameters: Any, key: str, default: bool, what: str) -> bool:
    if parameters is None:
        return default
    if not isinstance(parameters, dict):
        raise ApiError(400, f'"parameters" of {what} must be an object')
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{key} of {what} must be true or false, not {brief(value)}")
    return value


def output_names(model: ServedModel, names: list[str] | None) -> tuple[str, ...]:
    """The outputs to compute, sorted: those named (400 for unknown ones), or every output."""
    if not names:
        return tuple(sorted(model.output_names))
    unknown = [n for n in names if n not in model.output_names]
    if unknown:
        raise ApiError(400, f"unknown outputs {unknown}; the model has {model.output_names}")
    return tuple(sorted(set(names)))


def _requested(body: dict, model: ServedModel) -> dict[str, bool]:
    """Each output to compute, and whether it is answered as binary data."""
    every = _flag(body.get("parameters"), "binary_data_output", False, "the request")
    wanted = body.get("outputs")
    if wanted is None:
        return dict.fromkeys(output_names(model, None), every)
    if not isinstance(wanted, list) or not wanted or not all(isinstance(o, dict) and "name" in o for o in wanted):
        raise ApiError(400, '"outputs" must be a list of objects with a "name"')
    if not all(isinstance(o["name"], str) for o in wanted):
        raise ApiError(400, 'each "name" in "outputs" must be a string')
    binary = {o["name"]: _flag(o.get("parameters"), "binary_data", every, f"output {o['name']}") for o in wanted}
    return {key: binary[key] for key in output_names(model, list(binary))}


def datatype_of(array: np.ndarray) -> str:
    """An output's datatype as the protocol names it."""
    return _datatype(str(array.dtype))


def raw_bytes(array: np.ndarray) -> bytes:
    """An output's elements as the protocol's binary form lays them out: flat, row-major, little-endian."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


async def _infer(request: Request, registry: Registry, name: str, version: str | None) -> Response:
    model = find_model(registry, name, version)
    body = await read_raw(request)
    header = request.headers.get(HEADER_LENGTH)
    head, binary = _split(body, header)
    try:
        parsed = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        hint = "" if header is not None else "; binary tensor data needs the Inference-Header-Content-Length header"
        raise ApiError(400, f"body is not valid JSON ({exc.msg}){hint}") from None
    images = _input(parsed, binary, request.app.state.limits)
    request_id = parsed.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, '"id" must be a string')
    requested = _requested(parsed, model)
    results = await model.run_outputs(images, tuple(requested))
    outputs, chunks = [], []
    for key, binary_output in requested.items():
        array = results[key]
        output = {"name": key, "shape": list(array.shape), "datatype": datatype_of(array)}
        if binary_output:
            chunks.append(raw_bytes(array))
            output["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            output["data"] = array.ravel()
        outputs.append(output)
    payload: dict = {"model_name": model.name, "model_version": str(model.version)}
    if request_id is not None:
        payload["id"] = request_id
    payload["outputs"] = outputs
    if not chunks:
        return answer(payload, model)
    head_bytes = json_body(payload)
    headers = {
        "X-Model": model.name,
        "X-Model-Version": str(model.version),
        "Inference-Header-Content-Length": str(len(head_bytes)),
    }
    return Response(b"".join([head_bytes, *chunks]), 200, headers=headers, media_type=BINARY)


def _model_ready(registry: Registry, name: str, version: str | None) -> Response:
    model = find_model(registry, name, version)  # 404 unknown, 503 loading or failed
    return _json({"name": model.name, "ready": True})


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return _json({"name": "aeserve", "version": __version__, "extensions": EXTENSIONS})


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
    return _json(describe(registry, find_model(registry, name, None)))


@router.get("/models/{name}/versions/{version}", summary="Model metadata of one version", responses=ERRORS)
async def version_metadata(name: str, version: str, registry: Registered) -> Response:
    return _json(describe(registry, find_model(registry, name, version)))


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
