"""Export a trained recipe as a SavedModel with its manifest and extra arrays.

Layout (TensorFlow Serving's): ``models/<name>/<version>/`` holds ``saved_model.pb``,
``variables/``, ``model.tflite`` (the same graph compiled for LiteRT, which the service runs),
``manifest.json`` and, where the head needs them, ``clusters.npz`` and
``reconstruction_errors.json``. The manifest lists the sha256 of every other file.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import __version__
from training.datasets import PREPROCESS, Dataset
from training.evaluate import error_quantiles, evaluate, load_saved_model
from training.procedures import Context, Trained
from training.tflite import write_tflite
from training.zoo import Spec

SIGNATURE = "serving_default"


class ServingModule(tf.Module):
    """The exported object: the serving model and its one signature."""

    def __init__(self, serving: keras.Model):
        super().__init__()
        self.model = serving

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
    def serve(self, images):
        return self.model(images, training=False)


def write_saved_model(serving: keras.Model, path: Path) -> None:
    """Write ``serving`` as a SavedModel whose ``serving_default`` takes ``images float32 [N,28,28]``.

    A plain ``tf.Module`` rather than ``keras.export.ExportArchive``: the latter
    stores every variable twice, doubling the committed size.
    """
    module = ServingModule(serving)
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve})


def sha256_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest, by relative POSIX path."""
    return {
        f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != "manifest.json"
    }


def layer_table(model: keras.Model) -> list[dict]:
    """Every layer of the graph, nested models expanded, with type, output shape and parameters."""
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            rows.extend(layer_table(layer))
            continue
        if isinstance(layer, keras.layers.InputLayer):
            continue
        output = layer.output
        shape = [list(t.shape) for t in output] if isinstance(output, list | tuple) else list(output.shape)
        rows.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": shape,
                "parameters": int(layer.count_params()),
            }
        )
    return rows


def _kept_epoch(history: dict[str, list[float]]) -> dict[str, float]:
    """A phase's metrics at the epoch whose weights were kept (the last one when none is recorded)."""
    best = history.get("best_epoch", [len(history["loss"])])[0]
    return {k: best if k == "best_epoch" else v[best - 1] for k, v in history.items()}


def _output_specs(serving: keras.Model) -> dict[str, dict]:
    return {
        name: {"dtype": tensor.dtype, "shape": [-1 if d is None else d for d in tensor.shape]}
        for name, tensor in serving.output.items()
    }


def config_overrides(defaults: dict, config: dict, prefix: str = "") -> dict:
    """The values of ``config`` that differ from the recipe's ``defaults``, by dotted key."""
    changed = {}
    for key, value in config.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            changed.update(config_overrides(default, value, f"{prefix}{key}."))
        elif key not in defaults or default != value:
            changed[f"{prefix}{key}"] = value
    return changed


def architecture_description(spec: Spec, config: dict) -> str:
    """The recipe's description, flagged where the trained config departs from the one it describes."""
    overrides = config_overrides(spec.config, config)
    if not overrides:
        return spec.architecture
    changes = ", ".join(f"{key}={json.dumps(value)}" for key, value in overrides.items())
    return (
        f"{spec.architecture} [this version was trained with {changes} instead of the recipe's defaults, "
        "which the description above follows; `layers` lists its own graph]"
    )


def floor_records(spec: Spec, metrics: dict) -> list[dict]:
    """The manifest's record of ``spec``'s floors and whether ``metrics`` (the export's) meet each."""
    return [
        {
            "metric": f.metric,
            "split": f.split,
            "value": f.value,
            "higher_is_better": f.higher_is_better,
            "source": f.source,
            "holds": f.holds(metrics),
        }
        for f in spec.floors
    ]


def build_manifest(
    spec: Spec,
    trained: Trained,
    data: Dataset,
    ctx: Context,
    version: int,
    metrics: dict,
    quantiles: dict | None,
    wall_time_s: float,
) -> dict:
    """Everything the service and a reader need to know about one exported model."""
    outputs = _output_specs(trained.serving)
    latent_dim = int(outputs["codes"]["shape"][-1])
    side = math.isqrt(latent_dim)
    config = trained.notes.get("config") or spec.config
    manifest = {
        "name": spec.name,
        "version": version,
        "dataset": spec.dataset,
        "preprocess": data.preprocess or PREPROCESS[spec.dataset],
        "recipe": spec.recipe,
        **({"template": spec.template} if spec.model_name else {}),
        "endpoints": list(spec.endpoints),
        "signature": SIGNATURE,
        "inputs": {"images": {"dtype": "float32", "shape": [-1, 28, 28], "range": [0.0, 1.0]}},
        "outputs": outputs,
        "latent_dim": latent_dim,
        "code_image_shape": [side, side] if side * side == latent_dim else None,
        "class_names": data.class_names,
        "architecture": {
            "description": architecture_description(spec, config),
            "parameters": int(trained.serving.count_params()),
            "layers": layer_table(trained.serving),
        },
        "training": {
            "config": config,
            "overrides": config_overrides(spec.config, config),
            "seed": ctx.seed,
            "epoch_scale": ctx.epoch_scale,
            "wall_time_s": round(wall_time_s, 1),
            "kept_epoch": {phase: _kept_epoch(h) for phase, h in trained.history.items() if h},
            "notes": {k: v for k, v in trained.notes.items() if k != "config"},
        },
        "data": {
            "source": data.source,
            "sha256": data.checksums,
            "train_examples": len(data.train),
            "val_examples": len(data.val),
            "test_examples": len(data.test),
            "val_split_seed": ctx.seed,
            # a --data source: its kind, files, size and the sha256 of its contents, and how it was split
            **({"contents": data.facts} if data.facts else {}),
            **({"split": data.split} if data.split else {}),
        },
        "metrics": metrics,
        "reference": {
            "figure": spec.reference,
            "floors": floor_records(spec, metrics),
        },
        "project_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if quantiles is not None:
        manifest["in_distribution"] = {"file": "reconstruction_errors.json", **quantiles}
    if trained.mixture is not None:
        manifest["clusters"] = {
            "file": "clusters.npz",
            "n_clusters": len(trained.mixture["means"]),
            "output": "cluster_probabilities",
            "label_hints": [data.class_names[k] if k >= 0 else "" for k in trained.label_hints],
        }
    if trained.centres is not None:
        manifest["clusters"] = {
            "file": "clusters.npz",
            "n_clusters": len(trained.centres),
            "output": "distances",
            "label_hints": [data.class_names[k] if k >= 0 else "" for k in trained.label_hints],
        }
    return manifest


def add_litert(folder: Path, manifest: dict, test_images: np.ndarray) -> None:
    """Compile the SavedModel in ``folder`` to ``model.tflite``, checked on ``test_images``; note it in ``manifest``."""
    manifest["litert"], manifest["tensor_names"] = write_tflite(folder, manifest, test_images)


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest.json`` with the sha256 of every other file in ``folder``."""
    manifest["files"] = sha256_files(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def export(
    spec: Spec,
    trained: Trained,
    data: Dataset,
    ctx: Context,
    models_dir: Path,
    version: int = 1,
    wall_time_s: float = 0.0,
    outliers: np.ndarray | None = None,
    replace: bool = True,
) -> Path:
    """Export, reload, evaluate through the reloaded graph, write extras and manifest; returns the folder.

    ``outliers`` (another dataset's test images, for recipes whose config names an
    ``ood_dataset``) adds the out-of-distribution AUROC and detection rate. The new version
    replaces an old one of the same number only once it is complete; with ``replace`` False an
    existing version is an error (``FileExistsError``) and stays as it is.
    """
    target = models_dir / spec.name / str(version)
    if not replace and target.exists():
        raise FileExistsError(f"{target} exists; a version is never overwritten")
    staging = target.with_name(f".{version}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    created = not staging.parent.exists()
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        _export_into(staging, spec, trained, data, ctx, version, wall_time_s, outliers)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(staging.parent, ignore_errors=True)
        raise
    if not replace and target.exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise FileExistsError(f"{target} exists; a version is never overwritten")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _export_into(
    staging: Path,
    spec: Spec,
    trained: Trained,
    data: Dataset,
    ctx: Context,
    version: int,
    wall_time_s: float,
    outliers: np.ndarray | None,
) -> None:
    write_saved_model(trained.serving, staging)

    predict = load_saved_model(staging)
    metrics = evaluate(predict, data, noise_std=spec.noise_std, outliers=outliers)
    quantiles = error_quantiles(predict, data, outliers) if "reconstruct" in spec.endpoints else None
    if quantiles is not None and outliers is not None:
        quantiles["outlier_dataset"] = f"{spec.config['ood_dataset']} test"
    if quantiles is not None:
        (staging / "reconstruction_errors.json").write_text(json.dumps(quantiles, indent=2) + "\n")
    if trained.centres is not None:
        np.savez(
            staging / "clusters.npz",
            centres=trained.centres,
            label_hints=np.asarray(trained.label_hints, dtype=np.int64),
        )
    if trained.mixture is not None:
        np.savez(
            staging / "clusters.npz",
            **trained.mixture,
            label_hints=np.asarray(trained.label_hints, dtype=np.int64),
        )

    manifest = build_manifest(spec, trained, data, ctx, version, metrics, quantiles, wall_time_s)
    add_litert(staging, manifest, data.test.pixels())
    write_manifest(staging, manifest)
