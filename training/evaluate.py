"""Evaluate a model through its serving graph, the same numbers a client gets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from training import metrics as m
from training.datasets import Dataset, Split

Predict = Callable[[np.ndarray], dict[str, np.ndarray]]
TEST_NOISE_SEED = 2024
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
THRESHOLD_QUANTILE = 0.99


def signature_predict(signature, batch_size: int = 1000) -> Predict:
    """Wrap a SavedModel signature (or a Keras serving model) as a batched numpy function."""

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), batch_size):
            batch = tf.constant(images[start : start + batch_size], dtype=tf.float32)
            out = signature(images=batch) if hasattr(signature, "structured_outputs") else signature(batch)
            for key, value in out.items():
                parts.setdefault(key, []).append(np.asarray(value))
        return {key: np.concatenate(values) for key, values in parts.items()}

    return predict


def load_saved_model(path: Path) -> Predict:
    """The ``serving_default`` signature of an exported model as a batched numpy function."""
    return signature_predict(tf.saved_model.load(str(path)).signatures["serving_default"])


def litert_predict(path: Path, batch_size: int = 256) -> Predict:
    """The ``serving_default`` signature of ``model.tflite`` in ``path`` (what the service runs), batched."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path / "model.tflite"), num_threads=2).get_signature_runner("serving_default")

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size], np.float32)
            for key, value in runner(images=batch).items():
                parts.setdefault(key, []).append(value)
        return {key: np.concatenate(values) for key, values in parts.items()}

    return predict


def served_predict(path: Path) -> Predict:
    """The exported model as the service runs it: ``model.tflite`` when there is one, else the SavedModel."""
    return litert_predict(path) if (path / "model.tflite").exists() else load_saved_model(path)


def noisy_images(images: np.ndarray, std: float, seed: int = TEST_NOISE_SEED) -> np.ndarray:
    """Add seeded Gaussian noise and clip to 0..1, as the denoiser is evaluated."""
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0.0, std, images.shape).astype(np.float32), 0.0, 1.0)


def split_metrics(
    predict: Predict, split: Split, noise_std: float, outliers: np.ndarray | None = None
) -> dict[str, float]:
    """Every metric the model's outputs allow, on one split.

    ``outliers`` (images of another dataset) adds ``ood_auroc``: how well the per-image
    reconstruction error tells them from this split's images.
    """
    clean = split.pixels()
    out = predict(clean)
    result: dict[str, float] = {"examples": len(split)}
    if "reconstruction" in out:
        errors = m.per_image_mse(clean, out["reconstruction"])
        result.update(
            mse=float(errors.mean()),
            psnr_db=m.psnr_db(errors.mean()),
            rounded_accuracy=m.rounded_accuracy(clean, out["reconstruction"]),
        )
        if outliers is not None:
            outlier_errors = m.per_image_mse(outliers, predict(outliers)["reconstruction"])
            result["ood_auroc"] = m.auroc(errors, outlier_errors)
    if "denoised" in out:
        noisy = noisy_images(clean, noise_std)
        denoised = predict(noisy)["denoised"]
        mse = float(m.per_image_mse(clean, denoised).mean())
        noisy_mse = float(m.per_image_mse(clean, noisy).mean())
        result.update(
            noise_std=noise_std,
            mse=mse,
            psnr_db=m.psnr_db(mse),
            noisy_input_mse=noisy_mse,
            noisy_input_psnr_db=m.psnr_db(noisy_mse),
        )
    if split.labels is None:  # unlabelled data: no accuracy, no cluster agreement with classes
        return result
    if "probabilities" in out:
        result["accuracy"] = m.accuracy(split.labels, out["probabilities"].argmax(axis=1))
    if "cluster" in out:
        result.update(
            cluster_acc=m.cluster_accuracy(split.labels, out["cluster"]), nmi=m.nmi(split.labels, out["cluster"])
        )
    return result


def evaluate(
    predict: Predict, data: Dataset, noise_std: float = 0.6, outliers: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """Metrics on the validation and the test split; ``outliers`` adds the test split's ``ood_auroc``."""
    return {
        "val": split_metrics(predict, data.val, noise_std),
        "test": split_metrics(predict, data.test, noise_std, outliers),
    }


def outlier_images(config: dict, data_dir: str | None = None) -> np.ndarray | None:
    """The test images of the dataset a recipe's config names as out-of-distribution (``ood_dataset``)."""
    from training.datasets import load_dataset

    name = config.get("ood_dataset")
    return load_dataset(name, data_dir, allow_download=False).test.pixels() if name else None


def error_quantiles(predict: Predict, data: Dataset, outliers: np.ndarray | None = None) -> dict | None:
    """Training-set reconstruction-error quantiles and the ``in_distribution`` threshold.

    The threshold is the training set's 99th percentile of per-image MSE; the
    false-positive rate is the share of clean test images above it. With ``outliers``,
    the share of them above it (flagged as not in distribution) is added.
    """
    train = predict(data.train.pixels())
    if "reconstruction" not in train:
        return None
    errors = m.per_image_mse(data.train.pixels(), train["reconstruction"])
    threshold = float(np.quantile(errors, THRESHOLD_QUANTILE))
    test_errors = m.per_image_mse(data.test.pixels(), predict(data.test.pixels())["reconstruction"])
    result = {
        "metric": "per-image MSE of the reconstruction",
        "quantiles": {str(q): float(np.quantile(errors, q)) for q in QUANTILES},
        "threshold_quantile": THRESHOLD_QUANTILE,
        "threshold": threshold,
        "test_false_positive_rate": float(np.mean(test_errors > threshold)),
    }
    if outliers is not None:
        outlier_errors = m.per_image_mse(outliers, predict(outliers)["reconstruction"])
        result["outlier_detection_rate"] = float(np.mean(outlier_errors > threshold))
    return result


def read_manifest(model_dir: Path) -> dict:
    """The manifest of one exported model version."""
    return json.loads((model_dir / "manifest.json").read_text())
