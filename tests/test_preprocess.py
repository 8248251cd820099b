"""Each model's preprocessing rule: named in its manifest, used by default for every image file uploaded
for it (the five endpoints, TF Serving's b64 instances), overridden by ``preprocess=``."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
from conftest import MODELS_DIR, ready_app
from helpers import multipart, npy_bytes, png_bytes

from app.imaging import decode_image
from app.preprocess import DEFAULT_RULE, RULES, product_style, rule_of
from scripts.upload_accuracy import dataset_look, on_grey_paper, on_white_page

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COUNT = 300  # Fashion-MNIST test images uploaded per form
PER_REQUEST = 100
CLASSIFIER = "fashion-mnist-conv-classifier"


@pytest.fixture(scope="module")
def fashion_test(data_dir):
    """The first ``COUNT`` Fashion-MNIST test images (uint8) and labels."""
    from training.datasets import load_dataset

    test = load_dataset("fashion-mnist", data_dir, allow_download=False).test
    return test.images[:COUNT], test.labels[:COUNT]


async def classified(client, query: str, files: list[bytes], kind: str) -> np.ndarray:
    """The labels ``/classify?<query>`` gives the image files, sent ``PER_REQUEST`` to a request."""
    labels = []
    for start in range(0, len(files), PER_REQUEST):
        answer = await client.post(f"/classify?{query}", **multipart(*files[start : start + PER_REQUEST], kind=kind))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model"] == CLASSIFIER
        labels += [p["label"] for p in answer.json()["predictions"]]
    return np.array(labels)


async def array_accuracy(client, images: np.ndarray, labels: np.ndarray) -> float:
    answer = await client.post(
        "/classify?dataset=fashion-mnist", content=npy_bytes(images), headers={"content-type": "application/x-npy"}
    )
    assert answer.status_code == 200
    return float(np.mean([p["label"] for p in answer.json()["predictions"]] == labels))


FORMS = {
    "dataset look, 112x112 PNG": (lambda image, _: dataset_look(image), "image/png"),
    "dark on a white page, off-centre JPEG": (on_white_page, "image/jpeg"),
    "the same on noisy grey paper, JPEG": (on_grey_paper, "image/jpeg"),
}


@pytest.mark.parametrize("form", list(FORMS))
async def test_fashion_files_with_default_parameters_score_as_arrays(client, fashion_test, form):
    images, labels = fashion_test
    make, kind = FORMS[form]
    files = [make(image, seed) for seed, image in enumerate(images)]
    arrays = await array_accuracy(client, images, labels)
    uploaded = float(np.mean(await classified(client, "dataset=fashion-mnist", files, kind) == labels))
    assert abs(uploaded - arrays) <= 0.03, (form, uploaded, arrays)
    # the digit pipeline, still there on request, serves these files far worse
    digits = await classified(client, "dataset=fashion-mnist&preprocess=mnist", files[:100], kind)
    assert float(np.mean(digits == labels[:100])) < arrays - 0.1


async def test_tf_serving_b64_instances_get_the_models_rule(client, fashion_test):
    images, labels = fashion_test
    images, labels = images[:100], labels[:100]
    files = [on_white_page(image, seed) for seed, image in enumerate(images)]
    body = {"instances": [{"b64": base64.b64encode(f).decode()} for f in files]}
    answer = await client.post(f"/v1/models/{CLASSIFIER}:predict", json=body)
    assert answer.status_code == 200
    by_b64 = np.argmax([p["probabilities"] for p in answer.json()["predictions"]], axis=1)
    assert (by_b64 == await classified(client, f"model={CLASSIFIER}", files, "image/jpeg")).all()
    assert abs(float(np.mean(by_b64 == labels)) - await array_accuracy(client, images, labels)) <= 0.03


async def test_preprocess_overrides_the_models_rule(client, fashion_test):
    images, _ = fashion_test
    page = on_white_page(images[0], 0)
    encoded = {}
    for query in ("", "&preprocess=product", "&preprocess=mnist", "&preprocess=none"):
        answer = await client.post(f"/encode?model={CLASSIFIER}{query}", **multipart(page, kind="image/jpeg"))
        assert answer.status_code == 200
        encoded[query] = answer.json()["codes"][0]
    assert encoded[""] == encoded["&preprocess=product"]
    assert encoded["&preprocess=mnist"] != encoded[""] and encoded["&preprocess=none"] != encoded[""]
    # and an MNIST model takes the product rule when asked
    digit = await client.post("/classify?preprocess=product", **multipart(page, kind="image/jpeg"))
    assert digit.status_code == 200 and digit.headers["x-model"].startswith("mnist-")


async def test_an_unknown_rule_is_refused_with_the_rules_named(client):
    answer = await client.post("/classify?preprocess=fancy", **multipart(png_bytes(np.zeros((28, 28), np.uint8))))
    assert answer.status_code == 422
    assert all(rule in answer.json()["error"] for rule in RULES)


async def test_openapi_and_models_name_the_rules(client):
    schema = (await client.get("/openapi.json")).json()
    for path in ("/encode", "/reconstruct", "/denoise", "/classify", "/cluster"):
        (parameter,) = [p for p in schema["paths"][path]["post"]["parameters"] if p["name"] == "preprocess"]
        assert set(RULES) <= set(json.dumps(parameter["schema"]).replace('"', " ").split())
        assert all(f"{rule}:" in parameter["description"] for rule in RULES)
    models = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
    assert {m["preprocess"] for n, m in models.items() if n.startswith("fashion-mnist-")} == {"product"}
    assert {m["preprocess"] for n, m in models.items() if n.startswith("mnist-")} == {"mnist"}


def test_every_committed_manifest_names_its_datasets_rule():
    from training.datasets import PREPROCESS

    manifests = [json.loads(path.read_text()) for path in sorted(MODELS_DIR.glob("*/*/manifest.json"))]
    assert len(manifests) >= 21
    for manifest in manifests:
        assert manifest["preprocess"] == PREPROCESS[manifest["dataset"]] and manifest["preprocess"] in RULES
    assert set(PREPROCESS.values()) <= set(RULES)
    assert rule_of({"dataset": "mnist"}) == DEFAULT_RULE == "mnist"


async def test_a_manifest_without_a_rule_means_the_digit_pipeline_and_an_unknown_one_is_refused(
    tmp_path, client, fashion_test
):
    import httpx

    shutil.copytree(MODELS_DIR / CLASSIFIER, tmp_path / CLASSIFIER)
    path = tmp_path / CLASSIFIER / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["preprocess"]
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    page = on_white_page(fashion_test[0][0], 0)
    transport = httpx.ASGITransport(app=ready_app(models_dir=tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as old:
        answer = await old.post(f"/encode?model={CLASSIFIER}", **multipart(page, kind="image/jpeg"))
    digits = await client.post(f"/encode?model={CLASSIFIER}&preprocess=mnist", **multipart(page, kind="image/jpeg"))
    assert answer.json()["codes"] == digits.json()["codes"]

    path.write_text(json.dumps(manifest | {"preprocess": "fancy"}, indent=2) + "\n")
    state = ready_app(models_dir=tmp_path).state.registry.states[(CLASSIFIER, 1)]
    assert state.status == "failed" and "'fancy'" in state.reason and "product" in state.reason


# ---------------------------------------------------------------- the product pipeline itself


def test_a_dark_garment_on_a_white_page_becomes_a_light_one_on_black_filling_28():
    page = np.ones((300, 400), np.float32)
    page[40:240, 250:350] = 0.2  # a 200x100 dark garment, off-centre
    out = product_style(page)
    assert out.shape == (28, 28) and out.dtype == np.float32
    rows, cols = np.flatnonzero(out.max(axis=1) > 0.5), np.flatnonzero(out.max(axis=0) > 0.5)
    assert (rows[0], rows[-1]) == (0, 27)  # the longest edge fills the height
    assert 13 <= len(cols) <= 15 and abs((cols[0] + cols[-1]) / 2 - 13.5) <= 0.5  # 14 wide, centred
    assert out[14, 14] == pytest.approx(0.8, abs=0.02)  # negated, relative to the page
    assert out[:, :5].max() == 0 and out[:, -5:].max() == 0  # the background is exactly 0


def test_an_image_that_looks_like_the_dataset_is_not_negated(fashion_test):
    images, _ = fashion_test
    similar = [
        np.corrcoef(product_style(decode_image(dataset_look(image), 10**6)).ravel(), image.ravel())[0, 1]
        for image in images[:100]
    ]
    assert min(similar) > 0.6 and np.median(similar) > 0.9  # the same picture, light on black (negated: below 0)


def test_a_blank_image_stays_blank():
    for level in (0.0, 0.5, 1.0):
        assert product_style(np.full((40, 30), level, np.float32)).max() == 0
