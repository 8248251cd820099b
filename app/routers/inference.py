"""The OpenAPI declaration of the five inference routes: ``/encode``, ``/reconstruct``, ``/denoise``,
``/classify``, ``/cluster`` (served by :mod:`app.inference`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.inference import ENDPOINTS, MAX_NOISE_STD, MAX_SEED, PREPROCESS
from app.preprocess import DESCRIPTIONS
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

Dataset = Annotated[
    str | None,
    Query(
        description="a served dataset (GET /models lists them: mnist, fashion-mnist and any a model folder adds; "
        "default mnist), whose best model for the endpoint answers",
        examples=["mnist"],
    ),
]
ModelName = Annotated[
    str | None, Query(description="a model name from GET /models (default: the dataset's best for this endpoint)")
]
Version = Annotated[int | None, Query(ge=1, description="a version of the model named by model (default: its newest)")]
NoiseStd = Annotated[
    float | None, Query(ge=0, le=MAX_NOISE_STD, description="add Gaussian noise of this std first (clipped to 0..1)")
]
Seed = Annotated[int | None, Query(ge=0, le=MAX_SEED, description="seed of that noise")]
Preprocess = Annotated[
    Literal[PREPROCESS] | None,
    Query(
        description="image files only; default: the model's own rule, its manifest's preprocess (mnist for the "
        "MNIST models, product for the Fashion-MNIST ones). "
        + "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items())
    ),
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


def _docs(model, path: str) -> dict:
    """OpenAPI extras of ``path``: its response model, the forms it answers in, the errors, the request body."""
    content = {media: {} for media in ENDPOINTS[path].offered}
    return {
        "responses": {200: {"model": model, "content": content}, **ERRORS},
        "openapi_extra": {"requestBody": REQUEST_BODY},
    }


# The functions below declare the five routes for OpenAPI: their parameters and descriptions.
# Requests never reach them; app.inference.InferenceRoutes answers them in front of FastAPI's routing.


@router.post("/encode", summary="Images to latent codes", **_docs(EncodeResponse, "/encode"))
def encode(
    dataset: Dataset = None, model: ModelName = None, version: Version = None, preprocess: Preprocess = None
) -> None:
    """The latent code of each image (`Accept: application/x-npy` for the float32 array)."""


@router.post(
    "/reconstruct", summary="Images to reconstructions, with errors", **_docs(ReconstructResponse, "/reconstruct")
)
def reconstruct(
    dataset: Dataset = None, model: ModelName = None, version: Version = None, preprocess: Preprocess = None
) -> None:
    """Each image decoded from its code, its mean squared error and whether that error is in distribution
    (at most the training set's 99th percentile). `Accept: image/png` gives the images (a grid for a batch)."""


@router.post("/denoise", summary="Noisy images to clean ones", **_docs(DenoiseResponse, "/denoise"))
def denoise(
    dataset: Dataset = None,
    model: ModelName = None,
    version: Version = None,
    preprocess: Preprocess = None,
    noise_std: NoiseStd = None,
    seed: Seed = None,
) -> None:
    """Each image with its noise removed; with `noise_std`, Gaussian noise is added first and the noisy input
    is returned beside the result."""


@router.post("/classify", summary="Images to classes", **_docs(ClassifyResponse, "/classify"))
def classify(
    dataset: Dataset = None, model: ModelName = None, version: Version = None, preprocess: Preprocess = None
) -> None:
    """The class of each image, its name, the confidence and every class's probability."""


@router.post("/cluster", summary="Images to clusters", **_docs(ClusterResponse, "/cluster"))
def cluster(
    dataset: Dataset = None, model: ModelName = None, version: Version = None, preprocess: Preprocess = None
) -> None:
    """The cluster of each image: the distances to every KMeans centre (KMeans models) or every cluster's
    probability (mixture and SCAN models), and the cluster's label hint (its majority training label, for
    display)."""
