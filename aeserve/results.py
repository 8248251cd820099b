"""The answers of the inference endpoints as small typed objects holding numpy arrays.

Every result is batch-shaped, one row per image sent (a single ``[28,28]`` image gives one row), and
names the model and version that answered.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Result:
    """What every answer carries: the model that answered and its version."""

    model: str
    version: int

    def __len__(self) -> int:
        """The number of images answered."""
        first = dataclasses.fields(self)[2]
        return len(getattr(self, first.name))


@dataclass(frozen=True)
class EncodeResult(Result):
    """``/encode``: ``codes`` is float32 ``[N, latent_dim]``."""

    codes: np.ndarray


@dataclass(frozen=True)
class ReconstructResult(Result):
    """``/reconstruct``: ``images`` float32 ``[N,28,28]`` in 0..1, ``errors`` the per-image mean squared error
    (float32 ``[N]``), ``in_distribution`` whether each error is at most the training set's 99th percentile."""

    images: np.ndarray
    errors: np.ndarray
    in_distribution: np.ndarray


@dataclass(frozen=True)
class DenoiseResult(Result):
    """``/denoise``: ``images`` float32 ``[N,28,28]``; ``noisy`` the noisy input when ``noise_std`` was given."""

    images: np.ndarray
    noisy: np.ndarray | None = None


@dataclass(frozen=True)
class ClassifyResult(Result):
    """``/classify``: ``labels`` int ``[N]``, ``class_names`` the name of each label, ``confidences`` float32
    ``[N]`` and ``probabilities`` float32 ``[N, classes]``."""

    labels: np.ndarray
    class_names: list[str]
    confidences: np.ndarray
    probabilities: np.ndarray


@dataclass(frozen=True)
class ClusterResult(Result):
    """``/cluster``: ``clusters`` int ``[N]``; ``scores`` float32 ``[N, n_clusters]``, the distance to each centre
    (``score_kind == "distances"``, KMeans models) or each cluster's probability (``"probabilities"``, mixture and
    SCAN models); ``label_hints`` each cluster's majority training label, for display."""

    clusters: np.ndarray
    scores: np.ndarray
    score_kind: str
    label_hints: list[str]


def join(parts: list[Result]) -> Result:
    """One result from the results of consecutive batches: arrays concatenated, lists extended."""
    if len(parts) == 1:
        return parts[0]
    values = {}
    for field in dataclasses.fields(parts[0]):
        items = [getattr(part, field.name) for part in parts]
        if isinstance(items[0], np.ndarray):
            values[field.name] = np.concatenate(items)
        elif isinstance(items[0], list):
            values[field.name] = [x for item in items for x in item]
        else:
            values[field.name] = items[0]
    return type(parts[0])(**values)
