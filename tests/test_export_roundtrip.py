"""Train every recipe for one epoch on a 512-image slice, export, reload: same outputs."""

from __future__ import annotations

import hashlib
import json

import anyio
import httpx
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MODELS_DIR, ready_app

from training import zoo
from training.datasets import Dataset, load_dataset
from training.procedures import Context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slices(data_dir):
    def take(name):
        full = load_dataset(name, data_dir, allow_download=False)
        return Dataset(
            name,
            full.train.take(512),
            full.val.take(128),
            full.test.take(256),
            full.class_names,
            full.source,
            full.checksums,
        )

    return {name: take(name) for name in ("mnist", "fashion-mnist")}


@pytest.mark.parametrize("name", list(zoo.BY_NAME))
def test_train_export_load_round_trip(name, slices, tmp_path):
    from training.export import export

    spec = zoo.get(name)
    data = slices[spec.dataset]
    # a warm start (the denoiser's) reads the committed version it starts from
    ctx = Context(seed=7, epoch_scale=0.01, verbose=0, models_dir=MODELS_DIR)
    keras.utils.set_random_seed(7)
    trained = spec.train(data, spec.config, ctx)
    ood = spec.config.get("ood_dataset")
    outliers = slices[ood].test.pixels() if ood else None
    folder = export(spec, trained, data, ctx, tmp_path, version=3, outliers=outliers)
    assert folder == tmp_path / name / "3"

    images = data.test.pixels()[:64]
    before = {k: np.asarray(v) for k, v in trained.serving(images).items()}
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["images"]
    after = {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}
    assert set(after) == set(before)
    for key, value in before.items():
        np.testing.assert_allclose(after[key], value, rtol=1e-5, atol=1e-5, err_msg=key)

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["name"] == name and manifest["version"] == 3
    assert manifest["endpoints"] == list(spec.endpoints)
    assert manifest["preprocess"] == {"mnist": "mnist", "fashion-mnist": "product"}[spec.dataset]
    assert {k: out["dtype"] for k, out in manifest["outputs"].items()} == {k: v.dtype.name for k, v in after.items()}
    assert manifest["metrics"]["test"]["examples"] == 256
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == digest
    assert {"saved_model.pb", "model.tflite"} <= set(manifest["files"])
    # the LiteRT form was checked against the SavedModel on the whole (sliced) test split
    assert manifest["litert"]["checked_images"] == 256
    assert set(manifest["litert"]["signatures"]) == {"serving_default", *spec.endpoints}
    assert set(manifest["tensor_names"]["outputs"]) == set(after)
    if "reconstruct" in spec.endpoints:
        quantiles = json.loads((folder / "reconstruction_errors.json").read_text())
        assert quantiles["threshold"] == manifest["in_distribution"]["threshold"]
    if "cluster" in spec.endpoints:
        with np.load(folder / "clusters.npz", allow_pickle=False) as arrays:
            if trained.mixture is None:
                np.testing.assert_allclose(arrays["centres"], trained.centres)
            for key, value in (trained.mixture or {}).items():
                np.testing.assert_allclose(arrays[key], value)
        assert len(manifest["clusters"]["label_hints"]) == 10

    # the service serves the freshly exported model (its model.tflite), with the same numbers
    app = ready_app(models_dir=tmp_path)
    assert app.state.registry.ready, app.state.registry.not_ready_reason()
    codes = anyio.run(serve_every_endpoint, app, spec, images[:4])
    scale = max(1.0, float(np.abs(after["codes"]).max()))
    np.testing.assert_allclose(codes, after["codes"][:4], rtol=1e-4, atol=1e-4 * scale)


async def serve_every_endpoint(app, spec, images: np.ndarray) -> np.ndarray:
    """Post ``images`` to every endpoint the model serves; return its codes from /encode."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        for endpoint in spec.endpoints:
            response = await http.post(f"/{endpoint}", params={"model": spec.name}, json={"images": images.tolist()})
            assert response.status_code == 200, response.text
            assert response.json()["model"] == spec.name and response.json()["version"] == 3
        encoded = await http.post("/encode", params={"model": spec.name}, json={"images": images.tolist()})
        return np.array(encoded.json()["codes"], np.float32)
