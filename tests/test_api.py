"""The five endpoints over the committed models: every input form, every output form, batch 1 and batch at the limit."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import as_json, multipart, npy_bytes, photo_of_digit, png_bytes
from PIL import Image

from app.registry import RANKING

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
NPY = {"content-type": "application/x-npy"}
N = 16


@pytest.fixture(scope="module")
def digits(mnist_test):
    images, labels = mnist_test
    return images[:N], labels[:N]


def forms(images: np.ndarray) -> dict[str, dict]:
    """The same batch as every input form, as httpx keyword arguments."""
    return {
        "json nested 0..1": {"json": as_json(images)},
        "json flat 0..255": {"json": as_json(images, flat=True)},
        "npy uint8 (N,28,28)": {"content": npy_bytes(images), "headers": NPY},
        "npy float32 (N,784)": {
            "content": npy_bytes(images.reshape(len(images), -1) / np.float32(255)),
            "headers": NPY,
        },
        "npy float64 (N,28,28,1)": {"content": npy_bytes(images[..., None] / 255.0), "headers": NPY},
        "npy big-endian float32, Fortran order": {
            "content": npy_bytes(np.asfortranarray((images / np.float32(255)).astype(">f4"))),
            "headers": NPY,
        },
        "multipart png, preprocess=none": {
            **multipart(*(png_bytes(im) for im in images)),
            "params": {"preprocess": "none"},
        },
    }


async def test_encode_is_the_same_through_every_input_form(client, digits):
    images, _ = digits
    answers = {}
    for form, kwargs in forms(images).items():
        response = await client.post("/encode", **kwargs)
        assert response.status_code == 200, (form, response.text)
        body = response.json()
        assert body["model"] == response.headers["x-model"] and body["version"] >= 1
        answers[form] = np.array(body["codes"], np.float32)
        assert answers[form].shape == (N, body["latent_dim"])
    reference = answers["npy uint8 (N,28,28)"]
    for form, codes in answers.items():
        np.testing.assert_allclose(codes, reference, rtol=1e-4, atol=1e-4, err_msg=form)


@pytest.mark.parametrize(("endpoint", "key"), [("encode", "codes"), ("reconstruct", "images"), ("denoise", "images")])
async def test_npy_output_equals_json_output(client, digits, endpoint, key):
    images, _ = digits
    as_npy = await client.post(f"/{endpoint}", content=npy_bytes(images), headers=NPY | {"accept": "application/x-npy"})
    assert as_npy.status_code == 200 and as_npy.headers["content-type"] == "application/x-npy"
    assert as_npy.headers["x-model"] and as_npy.headers["x-model-version"]
    array = np.load(io.BytesIO(as_npy.content), allow_pickle=False)
    assert array.dtype == np.float32
    as_json_body = (await client.post(f"/{endpoint}", content=npy_bytes(images), headers=NPY)).json()
    np.testing.assert_allclose(array, np.array(as_json_body[key], np.float32), rtol=1e-5, atol=1e-6)


async def test_version_picks_an_older_version_of_the_named_model(client, digits):
    images, _ = digits
    params = {"model": "mnist-conv-denoiser"}
    newest = (await client.post("/denoise", content=npy_bytes(images[:2]), headers=NPY, params=params)).json()
    first = await client.post("/denoise", content=npy_bytes(images[:2]), headers=NPY, params=params | {"version": "1"})
    assert first.status_code == 200 and first.json()["version"] == 1 and newest["version"] == 3
    # the same numbers as TF Serving's path to that version
    inputs = {"inputs": (images[:2] / 255).tolist()}
    v1 = await client.post("/v1/models/mnist-conv-denoiser/versions/1:predict", json=inputs)
    assert v1.status_code == 200
    np.testing.assert_allclose(first.json()["images"], np.array(v1.json()["outputs"]["denoised"]), atol=1e-5)
    assert not np.allclose(first.json()["images"], newest["images"], atol=1e-3)


IMAGES_OUT = ("application/json", "application/x-npy", "image/png")


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("image/*", "image/png"),
        ("application/*", "application/json"),
        ("image/png;q=0.5, application/x-npy", "application/x-npy"),
        ("application/json;q=0, */*", "application/x-npy"),  # q=0 refuses a type, even where a wildcard matches
        ("application/json;q=0, application/*", "application/x-npy"),
        ("application/json;q=0, application/x-npy;q=0, */*", "image/png"),
        ("Application/X-NPY", "application/x-npy"),
        ("application/json;q=0", None),
        ("text/html", None),
    ],
)
def test_accept_picks_the_preferred_offered_type(accept, answer):
    from app.errors import ApiError
    from app.responses import negotiate

    if answer is None:
        with pytest.raises(ApiError) as refused:
            negotiate(accept, IMAGES_OUT)
        assert refused.value.status == 406
    else:
        assert negotiate(accept, IMAGES_OUT) == answer


async def test_a_refused_json_is_not_answered_through_a_wildcard(client, digits):
    images, _ = digits
    headers = NPY | {"accept": "application/json;q=0, */*"}
    response = await client.post("/reconstruct", content=npy_bytes(images[:2]), headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-npy"


@pytest.mark.parametrize("endpoint", ["reconstruct", "denoise"])
@pytest.mark.parametrize("count", [1, 5])
async def test_png_output(client, digits, endpoint, count):
    images, _ = digits
    response = await client.post(
        f"/{endpoint}", content=npy_bytes(images[:count]), headers=NPY | {"accept": "image/png"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.mode == "L"
    assert picture.size == ((28, 28) if count == 1 else (3 * 30 - 2, 2 * 30 - 2))


async def test_reconstruct_reports_errors_and_in_distribution(client, digits, committed_app):
    images, _ = digits
    body = (await client.post("/reconstruct", content=npy_bytes(images), headers=NPY)).json()
    recon = np.array(body["images"], np.float32)
    assert recon.shape == (N, 28, 28) and recon.min() >= 0 and recon.max() <= 1
    expected = np.mean((recon - images / np.float32(255)).reshape(N, -1) ** 2, axis=1)
    np.testing.assert_allclose(body["errors"], expected, rtol=1e-4)
    threshold = committed_app.state.registry.get(body["model"]).threshold
    assert body["in_distribution"] == [e <= threshold for e in body["errors"]]
    assert sum(body["in_distribution"]) >= N - 1  # MNIST test digits are in distribution
    noise = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    noisy = (await client.post("/reconstruct", content=npy_bytes(noise), headers=NPY)).json()
    assert noisy["in_distribution"] == [False] * 4  # uniform noise is not a digit


async def test_denoise_with_server_side_noise_is_seeded(client, digits):
    images, _ = digits
    params = {"noise_std": 0.6, "seed": 3}
    first = (await client.post("/denoise", content=npy_bytes(images), headers=NPY, params=params)).json()
    again = (await client.post("/denoise", content=npy_bytes(images), headers=NPY, params=params)).json()
    assert first["noisy"] == again["noisy"] and first["images"] == again["images"]
    noisy, denoised = np.array(first["noisy"]), np.array(first["images"])
    clean = images / 255.0
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert np.mean((denoised - clean) ** 2) < np.mean((noisy - clean) ** 2) / 3
    plain = (await client.post("/denoise", content=npy_bytes(images), headers=NPY)).json()
    assert "noisy" not in plain


async def test_classify(client, digits):
    images, labels = digits
    for form, kwargs in forms(images).items():
        body = (await client.post("/classify", **kwargs)).json()
        predicted = [p["label"] for p in body["predictions"]]
        assert np.mean(np.array(predicted) == labels) >= 0.9, form
        for p in body["predictions"]:
            assert p["class_name"] == str(p["label"])
            assert p["confidence"] == pytest.approx(max(p["probabilities"]))
            assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-4) and len(p["probabilities"]) == 10


async def test_classify_fashion_names_classes(client, data_dir):
    from training.datasets import load_dataset

    test = load_dataset("fashion-mnist", data_dir, allow_download=False).test
    body = (
        await client.post(
            "/classify", params={"dataset": "fashion-mnist"}, content=npy_bytes(test.images[:32]), headers=NPY
        )
    ).json()
    assert body["model"].startswith("fashion-mnist-")
    names = [p["class_name"] for p in body["predictions"]]
    assert "Ankle boot" in names or "Trouser" in names
    assert np.mean([p["label"] for p in body["predictions"]] == test.labels[:32]) >= 0.75


async def test_cluster(client, digits):
    images, _ = digits
    body = (await client.post("/cluster", content=npy_bytes(images), headers=NPY)).json()
    assert body["n_clusters"] == 10 and len(body["assignments"]) == N
    for a in body["assignments"]:
        if "distances" in a:  # a KMeans head: the nearest centre
            assert len(a["distances"]) == 10 and a["cluster"] == int(np.argmin(a["distances"]))
        else:  # a mixture head: the most probable component
            assert len(a["probabilities"]) == 10 and a["cluster"] == int(np.argmax(a["probabilities"]))
        assert a["label_hint"] in [str(d) for d in range(10)]


@pytest.mark.parametrize("digit", [0, 1, 7])
async def test_photo_like_digit_is_classified_through_the_preprocessing(client, digit):
    response = await client.post("/classify", **multipart(photo_of_digit(digit, seed=digit)))
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == digit


async def test_jpeg_and_colour_uploads(client, digits):
    images, labels = digits
    rgb = Image.fromarray(255 - images[0]).convert("RGB").resize((112, 112))  # dark ink on white, colour, large
    response = await client.post("/classify", **multipart(png_bytes(rgb, "JPEG"), kind="image/jpeg"))
    assert response.json()["predictions"][0]["label"] == labels[0]


@pytest.mark.parametrize("model", ["mnist-stacked", "mnist-conv", "mnist-kmeans", "fashion-mnist-tied"])
async def test_named_models(client, digits, model):
    images, _ = digits
    response = await client.post("/encode", params={"model": model}, content=npy_bytes(images[:2]), headers=NPY)
    assert response.status_code == 200 and response.json()["model"] == model


async def test_batch_of_one_and_batch_at_the_limit(client, mnist_test):
    images, labels = mnist_test
    one = await client.post("/classify", content=npy_bytes(images[0]), headers=NPY)
    assert one.status_code == 200 and len(one.json()["predictions"]) == 1
    full = await client.post("/classify", content=npy_bytes(images[:1024]), headers=NPY)
    assert full.status_code == 200
    predicted = np.array([p["label"] for p in full.json()["predictions"]])
    assert len(predicted) == 1024 and np.mean(predicted == labels[:1024]) > 0.95
    over = await client.post("/classify", content=npy_bytes(images[:1025]), headers=NPY)
    assert over.status_code == 413


async def test_defaults_are_the_best_model_per_dataset(client):
    body = (await client.get("/models")).json()
    models = {m["name"]: m for m in body["models"]}
    for dataset in ("mnist", "fashion-mnist"):
        for endpoint, (metric, higher_is_better) in RANKING.items():
            serving = [m for m in models.values() if m["dataset"] == dataset and endpoint in m["endpoints"]]
            if not serving:
                assert endpoint not in body["defaults"][dataset]
                continue
            sign = 1 if higher_is_better else -1
            # models without the metric rank last, as the registry ranks them
            best = max(
                serving,
                key=lambda m, metric=metric, sign=sign: (metric in m["metrics"], sign * m["metrics"].get(metric, 0)),
            )
            assert body["defaults"][dataset][endpoint] == best["name"], (dataset, endpoint)
    assert all(m["status"] == "ready" for m in body["models"])


async def test_models_and_health(client):
    one = (await client.get("/models/mnist-conv")).json()
    assert one["latent_dim"] == 196 and one["code_image_shape"] == [14, 14]
    assert set(one["endpoints"]) == {"encode", "reconstruct", "cluster"}
    assert one["metrics"]["cluster_acc"] > 0.5 and one["manifest"]["files"]
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200


OUTPUT_KEYS = {
    "encode": "codes",
    "reconstruct": "images",
    "denoise": "images",
    "classify": "predictions",
    "cluster": "assignments",
}


@pytest.mark.parametrize("endpoint", list(OUTPUT_KEYS))
async def test_every_endpoint_takes_every_input_form(client, digits, endpoint):
    images, _ = digits
    for form, kwargs in forms(images[:3]).items():
        response = await client.post(f"/{endpoint}", **kwargs)
        assert response.status_code == 200, (form, response.text)
        body = response.json()
        assert len(body[OUTPUT_KEYS[endpoint]]) == 3, form
        assert body["model"] == response.headers["x-model"]
        assert str(body["version"]) == response.headers["x-model-version"]
