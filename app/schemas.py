"""Response and request shapes for the OpenAPI documentation (the handlers write JSON with orjson)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    error: str = Field(examples=["pixel values must lie in 0..1; got 0..255"])


class ImagesJson(BaseModel):
    """The JSON input form."""

    images: list[list[float] | list[list[float]]] = Field(
        description="each image 28x28 nested lists or a flat list of 784 numbers"
    )
    pixel_scale: int = Field(1, description="1: values are 0..1; 255: values are 0..255")


class ModelAnswer(BaseModel):
    model: str = Field(examples=["mnist-conv"])
    version: int = Field(examples=[1])


class EncodeResponse(ModelAnswer):
    latent_dim: int
    codes: list[list[float]]


class ReconstructResponse(ModelAnswer):
    images: list[list[list[float]]] = Field(description="28x28 reconstructions, 0..1")
    errors: list[float] = Field(description="per-image mean squared error of the reconstruction")
    in_distribution: list[bool] = Field(
        description="error at most the training set's 99th percentile (manifest in_distribution.threshold)"
    )


class DenoiseResponse(ModelAnswer):
    images: list[list[list[float]]] = Field(description="28x28 denoised images, 0..1")
    noisy: list[list[list[float]]] | None = Field(None, description="the noisy input, when noise_std was given")


class Prediction(BaseModel):
    label: int
    class_name: str
    confidence: float
    probabilities: list[float]


class ClassifyResponse(ModelAnswer):
    predictions: list[Prediction]


class Assignment(BaseModel):
    cluster: int
    distances: list[float] | None = Field(
        None, description="KMeans heads: Euclidean distance from the code to each centre"
    )
    probabilities: list[float] | None = Field(
        None, description="mixture heads: the probability of each cluster (the model gives one or the other)"
    )
    label_hint: str = Field(description="majority training class of the cluster, for display only")


class ClusterResponse(ModelAnswer):
    n_clusters: int
    assignments: list[Assignment]
