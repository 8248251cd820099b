"""TensorFlow Serving's REST API, so TF Serving clients work unchanged.

``GET /v1/models/{name}[/versions/{v}]`` (version status), ``.../metadata`` (the signature) and
``POST /v1/models/{name}[/versions/{v}]:predict`` with ``instances`` (row format, answered with
``predictions``) or ``inputs`` (columnar, answered with ``outputs``), as
https://www.tensorflow.org/tfx/serving/api_rest describes them. Every output of the signature
is computed, as TF Serving does. An instance may also be ``{"b64": "<image file>"}``: a PNG,
JPEG, ... made 28x28 by the model's preprocessing rule, as the multipart uploads of the five endpoints are.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.dependencies import get_registry
from app.errors import ApiError, brief
from app.inputs import Limits, check_batch, decode_files_off_loop
from app.protocols.common import (
    TF_DTYPES,
    answer,
    as_images,
    b64_file,
    find_model,
    read_json,
    tensor_shape,
    version_number,
)
from app.registry import Registry, ServedModel
from app.responses import JSON, json_body
from app.schemas import ErrorResponse

router = APIRouter(prefix="/v1/models", tags=["TensorFlow Serving REST API"])
Registered = Annotated[Registry, Depends(get_registry)]

SIGNATURE = "serving_default"
INPUT = "images"
# TF Serving's servable states (tensorflow_serving/apis/get_model_status.proto), by the registry's.
STATES = {"pending": "START", "loading": "LOADING", "ready": "AVAILABLE", "failed": "END"}
ERRORS = {404: {"model": ErrorResponse}, 400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
_PIXELS = [[0.0] * 28 for _ in range(28)]
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "signature_name": {"type": "string", "default": SIGNATURE},
                        "instances": {"type": "array", "description": "row format: one 28x28 image (or b64) each"},
                        "inputs": {"description": 'columnar format: the "images" tensor, or {"images": ...}'},
                    },
                },
                "examples": {
                    "row": {"value": {"instances": [_PIXELS]}},
                    "columnar": {"value": {"inputs": {"images": [_PIXELS]}}},
                    "b64": {"value": {"instances": [{"b64": "<base64 of a PNG>"}]}},
                },
            }
        },
    }
}


def _status(registry: Registry, name: str, version: str | None) -> dict:
    states = sorted((s for s in registry.states.values() if s.name == name), key=lambda s: s.version)
    if not states:
        raise ApiError(404, f"Servable not found for request: model {name!r} is not served; GET /models lists them")
    if version is not None:
        states = [s for s in states if s.version == version_number(version)]
        if not states:
            raise ApiError(404, f"Servable not found for request: model {name} has no version {version}")
    return {
        "model_version_status": [
            {
                "version": str(s.version),
                "state": STATES[s.status],
                "status": {
                    "error_code": "UNKNOWN" if s.status == "failed" else "OK",
                    "error_message": s.reason or "",
                },
            }
            for s in states
        ]
    }


def _tensor_info(dtype: str, shape: list[int], name: str) -> dict:
    dims = [{"size": str(size), "name": ""} for size in shape]
    shape_proto = {"dim": dims, "unknown_rank": False}
    return {"dtype": TF_DTYPES.get(dtype, "DT_INVALID"), "tensor_shape": shape_proto, "name": name}


def _metadata(model: ServedModel) -> dict:
    # The SavedModel's graph tensor names, which the export recorded (whichever runtime serves it).
    names = model.manifest.get("tensor_names", {})
    outputs = {
        key: _tensor_info(spec["dtype"], tensor_shape(model, key), names.get("outputs", {}).get(key, key))
        for key, spec in model.manifest["outputs"].items()
    }
    inputs = {INPUT: _tensor_info("float32", [-1, 28, 28], names.get("inputs", {}).get(INPUT, INPUT))}
    definition = {"inputs": inputs, "outputs": outputs, "method_name": "tensorflow/serving/predict"}
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: definition}}},
    }


def _instance(value: Any) -> Any:
    """One row: an image as nested lists, ``{"b64": ...}`` (its file's bytes), or ``{"images": either}``."""
    if isinstance(value, dict) and set(value) == {INPUT}:
        value = value[INPUT]  # the input named, once: {"images": {"images": ...}} names nothing more
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return b64_file(value["b64"])
        raise ApiError(400, f'an instance names inputs {sorted(value)}; the signature\'s one input is "{INPUT}"')
    return value


def _rows(body: Any, limits: Limits) -> tuple[list, bool]:
    """The request's rows (nested lists, or the bytes of an image file), and whether it came in row format."""
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object with "instances" or "inputs"')
    signature = body.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise ApiError(400, f"Serving signature name: {brief(signature)} not found in signature def; use {SIGNATURE!r}")
    if ("instances" in body) == ("inputs" in body):
        raise ApiError(400, 'send exactly one of "instances" (row format) or "inputs" (columnar format)')
    row = "instances" in body
    values = body["instances"] if row else body["inputs"]
    if not row and isinstance(values, dict) and "b64" not in values:
        if set(values) != {INPUT}:
            raise ApiError(400, f'"inputs" names {sorted(values)}; the signature\'s one input is "{INPUT}"')
        values = values[INPUT]
    if not row and isinstance(values, dict):  # one b64 image, columnar
        values = [values]
    if not isinstance(values, list) or not values:
        raise ApiError(422, f'"{"instances" if row else "inputs"}" must be a non-empty list of images')
    if len(values) > limits.max_batch:
        raise ApiError(413, f"{len(values)} images in one request; the limit is {limits.max_batch}")
    return [_instance(v) if isinstance(v, dict) else v for v in values], row


def _images(rows: list, decoded: np.ndarray | None, limits: Limits, row: bool) -> np.ndarray:
    """The image batch of the rows, the image files among them replaced by ``decoded``, in order."""
    if decoded is not None:  # decoded image files among the rows
        files = iter(decoded)
        images = [next(files) if isinstance(r, bytes) else as_images([r], limits, "an instance")[0] for r in rows]
        return check_batch(np.stack(images), limits)
    return as_images(rows, limits, '"instances"' if row else '"inputs"')


async def _predict(request: Request, registry: Registry, name: str, version: str | None) -> Response:
    model = find_model(registry, name, version)
    limits = request.app.state.limits
    rows, row = _rows(await read_json(request), limits)
    files = [r for r in rows if isinstance(r, bytes)]
    decoded = None
    if files:
        decoded = await decode_files_off_loop(files, limits, model.preprocess, request.app.state.decoders.run)
    images = _images(rows, decoded, limits, row)
    outputs = await model.run_outputs(images, tuple(sorted(model.output_names)))
    if row:
        if len(outputs) == 1:
            (only,) = outputs.values()
            return answer({"predictions": only}, model)
        keys = list(outputs)
        return answer({"predictions": [{k: outputs[k][i] for k in keys} for i in range(len(images))]}, model)
    return answer({"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}, model)


def _json(payload: dict) -> Response:
    return Response(json_body(payload), media_type=JSON)


@router.get("/{name}", summary="Model status: the state of every version", responses=ERRORS)
async def model_status(name: str, registry: Registered) -> Response:
    return _json(_status(registry, name, None))


@router.get("/{name}/versions/{version}", summary="Model status of one version", responses=ERRORS)
async def version_status(name: str, version: str, registry: Registered) -> Response:
    return _json(_status(registry, name, version))


@router.get("/{name}/metadata", summary="Model metadata: the serving signature", responses=ERRORS)
async def model_metadata(name: str, registry: Registered) -> Response:
    return _json(_metadata(find_model(registry, name, None)))


@router.get("/{name}/versions/{version}/metadata", summary="Model metadata of one version", responses=ERRORS)
async def version_metadata(name: str, version: str, registry: Registered) -> Response:
    return _json(_metadata(find_model(registry, name, version)))


@router.post("/{name}:predict", summary="Predict, row or columnar", responses=ERRORS, openapi_extra=PREDICT_BODY)
async def predict(name: str, request: Request, registry: Registered) -> Response:
    return await _predict(request, registry, name, None)


@router.post(
    "/{name}/versions/{version}:predict",
    summary="Predict with one version",
    responses=ERRORS,
    openapi_extra=PREDICT_BODY,
)
async def predict_version(name: str, version: str, request: Request, registry: Registered) -> Response:
    return await _predict(request, registry, name, version)
