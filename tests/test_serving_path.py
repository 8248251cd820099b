"""The service's request path around the model: settings reaching the batchers, per-endpoint graphs,
padding to warmed sizes, the plain-ASGI routes and EXIF orientation."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from app.imaging import decode_image
from app.main import create_app
from app.registry import BATCH_SIZES, padded_size
from app.settings import Settings

pytestmark = pytest.mark.anyio


def test_batching_settings_reach_the_registry(tmp_path):
    on = create_app(Settings(models_dir=tmp_path, batch_max_size=32, batch_max_delay_us=250, batch_max_queue_images=99))
    config = on.state.registry.batching
    assert (config.max_batch, config.max_delay_us, config.max_queue_images) == (32, 250, 99)
    assert create_app(Settings(models_dir=tmp_path, batching=False)).state.registry.batching is None


def test_batches_pad_to_a_warmed_size():
    assert [padded_size(n) for n in (1, 3, 5, 64, 65, 256, 300)] == [1, 4, 8, 64, 128, 256, 300]
    assert tuple(sorted(BATCH_SIZES)) == BATCH_SIZES


def test_each_endpoint_runs_only_its_outputs_and_matches_the_signature(committed_app, mnist_test):
    images = (mnist_test[0][:5] / 255.0).astype(np.float32)
    for versions in committed_app.state.registry.models.values():
        for served in versions.values():
            everything = served.owner.signatures["serving_default"](images=images)
            for endpoint in served.endpoints:
                outputs = served.predict(images, endpoint)  # 5 images run padded to 8
                assert set(outputs) == set(served.outputs_of(endpoint)), (served.name, endpoint)
                for key, value in outputs.items():
                    assert value.shape[0] == 5
                    np.testing.assert_allclose(value, everything[key].numpy(), rtol=1e-4, atol=1e-5)


async def test_padding_never_mixes_neighbours(committed_app, mnist_test):
    served = committed_app.state.registry.get("mnist-pretrained-classifier")
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
