"""The five endpoints: ``/encode``, ``/reconstruct``, ``/denoise``, ``/classify``, ``/cluster``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.inputs import Limits, read_images
from app.registry import Registry, ServedModel
from app.responses import JSON, NPY, PNG, json_response, negotiate, npy_response, png_response
from app.schemas import (
    ClassifyResponse,
    ClusterResponse,
    DenoiseResponse,
    EncodeResponse,
    ErrorResponse,
    ImagesJson,
    ReconstructResponse,
)

router = APIRouter(tags=["inference"])

Dataset = Annotated[str | None, Query(description="mnist or fashion-mnist (default mnist)", examples=["mnist"])]
ModelName = Annotated[
    str | None, Query(description="a model name from GET /models (default: the dataset's best for this endpoint)")
]
Preprocess = Annotated[
    Literal["mnist", "none"],
    Query(description="image files only: mnist (invert, crop, fit 20x20, centre by mass) or none (grey + resize)"),
]

_ZERO = [[0.0] * 28 for _ in range(28)]
REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["file"],
            },
            "example": {"file": ["digit.png"]},
        },
        "application/json": {
            "schema": ImagesJson.model_json_schema(),
            "examples": {
                "nested 28x28, 0..1": {"value": {"images": [_ZERO]}},
                "flat 784, 0..255": {"value": {"images": [[0] * 784], "pixel_scale": 255}},
            },
        },
        "application/x-npy": {
            "schema": {"type": "string", "format": "binary"},
            "example": "bytes of numpy.save(f, images) for uint8 (N,28,28) 0..255 or float (N,28,28) 0..1",
        },
    },
}
ERRORS = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "malformed body: not JSON, not an .npy file, not an image, truncated",
        404: "unknown model or dataset, or a model that does not serve this endpoint",
        406: "Accept asks for a form this endpoint does not offer",
        413: "body, batch or image over its limit",
        415: "Content-Type other than multipart/form-data, application/json, application/x-npy",
        422: "wrong shape, dtype, range, NaN or Inf, pixel_scale, or query parameter",
        503: "models still loading, or the model failed to load",
    }.items()
}


def _docs(model, *extra: str) -> dict:
    content = {JSON: {}} | {media: {} for media in extra}
    return {
        "responses": {200: {"model": model, "content": content}, **ERRORS},
        "openapi_extra": {"requestBody": REQUEST_BODY},
    }


@dataclass
class Call:
    """One inference request and its query parameters, as every endpoint receives it."""

    request: Request
    registry: Registry
    limits: Limits
    dataset: str | None
    model: str | None
    preprocess: str

    async def prepare(self, endpoint: str, offered: tuple[str, ...] = (JSON,)) -> tuple[ServedModel, str, np.ndarray]:
        """Negotiate, resolve the model, decode the body: every cheap check before the model runs."""
        media = negotiate(self.request.headers.get("accept"), offered)
        model = self.registry.resolve(endpoint, self.dataset, self.model)
        images = await read_images(self.request, self.limits, preprocess=self.preprocess == "mnist")
        return model, media, images


async def inference_call(
    request: Request, dataset: Dataset = None, model: ModelName = None, preprocess: Preprocess = "mnist"
) -> Call:
    """The shared dependency of the five endpoints: their common query parameters and the app's services.

    The registry and limits are read from the app here rather than injected as nested
    dependencies: each level of dependency resolution costs the hot path measurable time.
    """
    state = request.app.state
    return Call(request, state.registry, state.limits, dataset, model, preprocess)


InferenceCall = Annotated[Call, Depends(inference_call)]


@router.post("/encode", summary="Images to latent codes", **_docs(EncodeResponse, NPY))
async def encode(call: InferenceCall) -> Response:
    served, media, images = await call.prepare("encode", (JSON, NPY))
    codes = (await served.run(images))["codes"]
    if media == NPY:
        return npy_response(codes, served)
    payload = {"model": served.name, "version": served.version, "latent_dim": codes.shape[1], "codes": codes}
    return json_response(payload, served)


@router.post("/reconstruct", summary="Images to reconstructions, with errors", **_docs(ReconstructResponse, NPY, PNG))
async def reconstruct(call: InferenceCall) -> Response:
    served, media, images = await call.prepare("reconstruct", (JSON, NPY, PNG))
    reconstruction = (await served.run(images))["reconstruction"]
    if media == NPY:
        return npy_response(reconstruction, served)
    if media == PNG:
        return png_response(reconstruction, served)
    errors = np.mean((reconstruction - images).reshape(len(images), -1) ** 2, axis=1)
    payload = {
        "model": served.name,
        "version": served.version,
        "images": reconstruction,
        "errors": errors,
        "in_distribution": (errors <= served.threshold).tolist(),
    }
    return json_response(payload, served)


@router.post("/denoise", summary="Noisy images to clean ones", **_docs(DenoiseResponse, NPY, PNG))
async def denoise(
    call: InferenceCall,
    noise_std: Annotated[
        float | None, Query(ge=0, le=2, description="add Gaussian noise of this std first (clipped to 0..1)")
    ] = None,
    seed: Annotated[int | None, Query(ge=0, le=2**32 - 1, description="seed of that noise")] = None,
) -> Response:
    served, media, images = await call.prepare("denoise", (JSON, NPY, PNG))
    noisy = None
    if noise_std is not None:
        rng = np.random.default_rng(seed)
        noisy = np.clip(images + rng.normal(0.0, noise_std, images.shape), 0.0, 1.0).astype(np.float32)
        images = noisy
    denoised = (await served.run(images))["denoised"]
    if media == NPY:
        return npy_response(denoised, served)
    if media == PNG:
        return png_response(denoised, served)
    payload = {"model": served.name, "version": served.version, "images": denoised}
    if noisy is not None:
        payload["noisy"] = noisy
    return json_response(payload, served)


@router.post("/classify", summary="Images to classes", **_docs(ClassifyResponse))
async def classify(call: InferenceCall) -> Response:
    served, _, images = await call.prepare("classify")
    probabilities = (await served.run(images))["probabilities"]
    labels = probabilities.argmax(axis=1)
    names = served.class_names
    predictions = [
        {"label": int(k), "class_name": names[k], "confidence": float(p[k]), "probabilities": p}
        for k, p in zip(labels, probabilities, strict=True)
    ]
    return json_response({"model": served.name, "version": served.version, "predictions": predictions}, served)


@router.post("/cluster", summary="Images to clusters", **_docs(ClusterResponse))
async def cluster(call: InferenceCall) -> Response:
    served, _, images = await call.prepare("cluster")
    outputs = await served.run(images)
    hints = served.label_hints
    assignments = [
        {"cluster": int(k), "distances": d, "label_hint": hints[k] if k < len(hints) else ""}
        for k, d in zip(outputs["cluster"], outputs["distances"], strict=True)
    ]
    payload = {
        "model": served.name,
        "version": served.version,
        "n_clusters": outputs["distances"].shape[1],
        "assignments": assignments,
    }
    return json_response(payload, served)
