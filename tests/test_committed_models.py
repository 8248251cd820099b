"""The committed models are the product: each loads, is intact, and meets its floor on the test set."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import MODELS_DIR

from training import zoo
from training.datasets import load_dataset
from training.evaluate import evaluate, litert_predict
from training.registry import latest_version

pytestmark = pytest.mark.slow

OUTPUTS_FOR = {
    "encode": {"codes"},
    "reconstruct": {"reconstruction"},
    "denoise": {"denoised"},
    "classify": {"probabilities"},
    "cluster": {"cluster"},
}
# A clustering model gives each image its distances to the centres (KMeans) or its posterior (a mixture).
CLUSTER_SCORES = {"distances", "cluster_probabilities"}


@pytest.fixture(scope="module")
def datasets(data_dir):
    return {name: load_dataset(name, data_dir, allow_download=False) for name in ("mnist", "fashion-mnist")}


@pytest.mark.parametrize("name", list(zoo.BY_NAME))
def test_committed_model(name, datasets):
    spec = zoo.get(name)
    folder = latest_version(MODELS_DIR / name)
    assert folder is not None, f"no committed version of {name}"
    manifest = json.loads((folder / "manifest.json").read_text())

    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"])
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == digest, rel
    # the SavedModel and model.tflite hold the same weights, each a few MB
    assert sum((folder / rel).stat().st_size for rel in manifest["files"]) < 12 * 2**20
    assert manifest["litert"]["file"] == "model.tflite" and manifest["litert"]["checked_images"] == 10_000
    assert set(manifest["litert"]["signatures"]) == {"serving_default", *spec.endpoints}

    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    (spec_in,) = signature.structured_input_signature[1].values()
    assert spec_in.name == "images" and spec_in.dtype == tf.float32 and spec_in.shape.as_list() == [None, 28, 28]
    expected_outputs = set().union(*(OUTPUTS_FOR[e] for e in spec.endpoints))
    assert expected_outputs <= set(signature.structured_outputs)
    # the manifest's outputs are the signature's, dtypes included (the cluster index is int32)
    declared = {key: (out["dtype"], out["shape"]) for key, out in manifest["outputs"].items()}
    outputs = signature.structured_outputs.items()
    graph = {key: (t.dtype.name, [-1 if d is None else d for d in t.shape]) for key, t in outputs}
    assert declared == graph
    if "cluster" in spec.endpoints:
        assert len(CLUSTER_SCORES & set(signature.structured_outputs)) == 1
        assert manifest["clusters"]["output"] in signature.structured_outputs

    # Through model.tflite, as the service runs it. A config's ood_dataset adds the test split's
    # ood_auroc (the other dataset's test images as outliers).
    ood = spec.config.get("ood_dataset")
    outliers = datasets[ood].test.pixels() if ood else None
    metrics = evaluate(litert_predict(folder), datasets[spec.dataset], spec.config.get("noise_std", 0.6), outliers)
    for floor in spec.floors:
        got = metrics[floor.split][floor.metric]
        assert floor.holds(metrics), f"{name}: {floor.describe()} but got {got:.4f}"
        assert got == pytest.approx(manifest["metrics"][floor.split][floor.metric], rel=1e-3, abs=1e-4)

    if "reconstruct" in spec.endpoints:
        ind = manifest["in_distribution"]
        assert json.loads((folder / ind["file"]).read_text())["threshold"] == ind["threshold"]
        assert 0 <= ind["test_false_positive_rate"] < 0.05
        if ood:
            assert 0 <= ind["outlier_detection_rate"] <= 1 and ind["outlier_dataset"] == f"{ood} test"
    if "cluster" in spec.endpoints:
        with np.load(folder / manifest["clusters"]["file"], allow_pickle=False) as arrays:
            if manifest["clusters"]["output"] == "distances":
                assert arrays["centres"].shape == (10, manifest["latent_dim"])
            else:
                k, d = arrays["means"].shape
                assert k == 10 and arrays["precisions_cholesky"].shape == (k, d, d)
                assert arrays["weights"].sum() == pytest.approx(1.0, abs=1e-5)
        assert set(manifest["clusters"]["label_hints"]) <= set(datasets[spec.dataset].class_names)


def test_every_recipe_is_committed():
    committed = {p.name for p in MODELS_DIR.iterdir() if p.is_dir() and latest_version(p)}
    assert set(zoo.BY_NAME) <= committed
