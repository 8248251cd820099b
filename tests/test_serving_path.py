"""The service's request path around the model: settings reaching the batchers, the runtimes and their
per-endpoint graphs, padding to warmed sizes, the plain-ASGI routes and EXIF orientation."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from app.imaging import decode_image
from app.main import create_app
from app.runtimes import LITERT_CALL_IMAGES, TF_BATCH_SIZES, padded_size
from app.settings import Settings
from tests.conftest import MODELS_DIR, ready_app

pytestmark = pytest.mark.anyio


def test_batching_settings_reach_the_registry(tmp_path):
    on = create_app(
        Settings(
            models_dir=tmp_path,
            batch_max_size=32,
            batch_max_delay_us=250,
            batch_max_queue_images=99,
            batch_inline_max_us=40,
        )
    )
    config = on.state.registry.batching
    assert (config.max_batch, config.max_delay_us, config.max_queue_images, config.inline_max_us) == (32, 250, 99, 40)
    assert create_app(Settings(models_dir=tmp_path, batching=False)).state.registry.batching is None


def test_call_costs_are_measured_at_load_for_every_endpoint(committed_app):
    for versions in committed_app.state.registry.models.values():
        for model in versions.values():
            sets = {model.outputs_of(endpoint) for endpoint in model.endpoints}
            assert set(model.costs) == sets, model.name
            for outputs in sets:
                fixed, per_image = model.costs[outputs]
                assert 0 <= fixed < 1 and per_image >= 0 and fixed + per_image > 0
                assert model.call_cost(outputs, 1) <= model.call_cost(outputs, 64)
            assert model.call_cost(("never", "measured"), 1) == float("inf")
    denoiser = committed_app.state.registry.resolve("denoise", None, "mnist-conv-denoiser")
    assert denoiser.costs[("denoised",)][1] < float("inf")  # a dear model's per-image cost too: its queue's time


def test_costs_are_measured_with_every_call_on_the_thread_too():
    """The queue deadline needs them, whichever calls the loop may run."""
    app = ready_app(batch_inline_max_us=0)
    models = [m for versions in app.state.registry.models.values() for m in versions.values()]
    assert models and all(m.costs for m in models)
    assert all(per_image < float("inf") for m in models for _, per_image in m.costs.values())


def test_tensorflow_batches_pad_to_a_warmed_size():
    assert [padded_size(n) for n in (1, 3, 5, 64, 65, 256, 300)] == [1, 4, 8, 64, 128, 256, 300]
    assert tuple(sorted(TF_BATCH_SIZES)) == TF_BATCH_SIZES


def _close(got: np.ndarray, want: np.ndarray, key: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, key
    if key == "cluster_probabilities":  # a mixture's posterior magnifies float32 rounding near boundaries
        np.testing.assert_allclose(got, want, atol=2e-2)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_litert_serves_each_endpoint_its_outputs_only_and_the_savedmodels_answers(committed_app, mnist_test):
    """The LiteRT graphs the service runs give every committed SavedModel's outputs, one signature per endpoint."""
    import tensorflow as tf

    images = (mnist_test[0][:70] / 255.0).astype(np.float32)  # one full call of 64 and a rest of 6
    for versions in committed_app.state.registry.models.values():
        for served in versions.values():
            assert type(served.runtime).__name__ == "LiteRtModel"
            everything = tf.saved_model.load(str(MODELS_DIR / served.name / str(served.version))).signatures[
                "serving_default"
            ](images=tf.constant(images))
            for endpoint in served.endpoints:
                outputs = served.predict(images, endpoint)
                assert set(outputs) == set(served.outputs_of(endpoint)), (served.name, endpoint)
                for key, value in outputs.items():
                    _close(value, everything[key].numpy(), f"{served.name} {key}")
            every = tuple(sorted(served.output_names))  # what the protocol routes may ask for at once
            for key, value in served.compute(images[:3], every).items():
                _close(value, everything[key].numpy()[:3], f"{served.name} {key}")
    assert LITERT_CALL_IMAGES < 70


def test_the_tensorflow_runtime_serves_the_same_answers(mnist_test):
    """``AESERVE_RUNTIME=tensorflow`` runs the SavedModels themselves; both runtimes agree."""
    lite = ready_app(warmup=False)
    tf_app = ready_app(runtime="tensorflow", warmup=False)
    images = (mnist_test[0][:5] / 255.0).astype(np.float32)  # TensorFlow runs them padded to 8
    for name in ("mnist-stacked", "mnist-conv", "mnist-umap-gmm", "fashion-mnist-conv-classifier"):
        on_lite, on_tf = lite.state.registry.get(name), tf_app.state.registry.get(name)
        assert type(on_tf.runtime).__name__ == "TensorFlowModel"
        for endpoint in on_tf.endpoints:
            expected = on_tf.predict(images, endpoint)
            for key, value in on_lite.predict(images, endpoint).items():
                _close(value, expected[key], f"{name} {key}")


async def test_batches_never_mix_neighbours(committed_app, mnist_test):
    for name in ("mnist-pretrained-classifier", "mnist-conv-classifier"):
        served = committed_app.state.registry.get(name)
        images = (mnist_test[0][:3] / 255.0).astype(np.float32)
        together = served.predict(images, "classify")["probabilities"]
        alone = np.concatenate([served.predict(image[None], "classify")["probabilities"] for image in images])
        np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6)


async def test_other_methods_on_inference_routes_are_405_with_allow(client):
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(method, "/classify")
        assert response.status_code == 405, method
        assert response.headers["allow"] == "POST" and "POST" in response.json()["error"]


async def test_inference_answers_name_the_model_in_headers_and_unknown_query_parameters_are_ignored(client):
    response = await client.post("/encode?flavour=vanilla", json={"images": [[0.0] * 784]})
    assert response.status_code == 200
    assert response.headers["x-model"] == response.json()["model"]
    assert response.headers["x-model-version"] == str(response.json()["version"])
    assert int(response.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("seed=-1", "seed"),
        ("seed=1.5", "seed"),
        ("noise_std=nan", "noise_std"),
        ("noise_std=inf", "noise_std"),
        ("noise_std=-0.1", "noise_std"),
        ("preprocess=fancy", "preprocess"),
    ],
)
async def test_denoise_query_parameters_are_checked(client, query, words):
    response = await client.post(f"/denoise?{query}", json={"images": [[0.0] * 784]})
    assert response.status_code == 422 and words in response.json()["error"]


async def test_a_client_that_leaves_mid_body_is_dropped_quietly(committed_app):
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/encode",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    await committed_app(scope, receive, send)
    assert sent == []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=committed_app), base_url="http://t") as http:
        assert (await http.post("/encode", json={"images": [[0.0] * 784]})).status_code == 200


def test_exif_orientation_is_applied_and_plain_pngs_are_left_alone():
    tall = np.zeros((40, 20), np.uint8)
    tall[:10] = 255  # a bright band at the top
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    jpeg = io.BytesIO()
    Image.fromarray(tall).save(jpeg, format="JPEG", exif=exif.tobytes(), quality=95)
    shown = decode_image(jpeg.getvalue(), 10**6)
    assert shown.shape == (20, 40) and shown[:, -10:].mean() > 0.8  # the band is now on the right
    png = io.BytesIO()
    Image.fromarray(tall).save(png, format="PNG")
    assert decode_image(png.getvalue(), 10**6).shape == (40, 20)
