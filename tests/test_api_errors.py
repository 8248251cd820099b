"""Every documented error: the right 4xx, a JSON ``{"error": ...}``, and the server keeps serving."""

from __future__ import annotations

import gzip
import pickle  # only to build the pickled .npy the service must refuse

import httpx
import numpy as np
import pytest
from conftest import MODELS_DIR, ready_app
from helpers import as_json, multipart, npy_bytes, png_bytes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
NPY = {"content-type": "application/x-npy"}
ZEROS = np.zeros((2, 28, 28), np.uint8)


def pickled_npy() -> bytes:
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
    header += b" " * (63 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + pickle.dumps(np.array([1, 2], object))


def truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    return data[: len(data) // 2]


CASES = [
    # (id, endpoint, request kwargs, status, words the error must contain)
    ("no content type", "/encode", {"content": b"abc"}, 415, "Content-Type"),
    ("text/plain", "/encode", {"content": b"abc", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    ("empty body", "/encode", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty"),
    ("invalid json", "/encode", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ("json without images", "/classify", {"json": {"pictures": []}}, 400, "images"),
    ("json list body", "/classify", {"json": [1, 2]}, 400, "images"),
    ("images not a list", "/encode", {"json": {"images": "abc"}}, 422, "list"),
    ("empty images", "/encode", {"json": {"images": []}}, 422, "no images"),
    ("ragged images", "/encode", {"json": {"images": [[0.0] * 784, [0.0] * 783]}}, 422, "784"),
    ("null in images", "/encode", {"json": {"images": [[None] * 784]}}, 422, "nulls"),
    ("string in images", "/encode", {"json": {"images": [["a"] * 784]}}, 422, "strings"),
    ("wrong image size", "/encode", {"json": {"images": [[0.0] * 100]}}, 422, "shape"),
    ("one image not in a list", "/encode", {"json": {"images": [[0.0] * 28] * 28}}, 422, "shape"),
    ("over range 0..1", "/encode", {"json": {"images": [[2.0] * 784]}}, 422, "0..1"),
    ("negative", "/encode", {"json": {"images": [[-0.5] * 784]}}, 422, "0..1"),
    ("over range 0..255", "/encode", {"json": {"images": [[300] * 784], "pixel_scale": 255}}, 422, "0..255"),
    ("wrong pixel_scale", "/encode", {"json": {"images": [[0] * 784], "pixel_scale": 100}}, 422, "pixel_scale"),
    ("not npy", "/encode", {"content": b"PK\x03\x04 zip", "headers": NPY}, 400, ".npy"),
    ("pickled npy", "/encode", {"content": pickled_npy(), "headers": NPY}, 422, "objects"),
    ("complex npy", "/encode", {"content": npy_bytes(ZEROS.astype(np.complex64)), "headers": NPY}, 422, "complex"),
    ("int64 npy", "/encode", {"content": npy_bytes(ZEROS.astype(np.int64)), "headers": NPY}, 422, "int64"),
    ("string npy", "/encode", {"content": npy_bytes(np.array(["a", "b"])), "headers": NPY}, 422, "dtype"),
    (
        "npy wrong shape",
        "/encode",
        {"content": npy_bytes(np.zeros((2, 32, 32), np.uint8)), "headers": NPY},
        422,
        "shape",
    ),
    ("npy rank 1", "/encode", {"content": npy_bytes(np.zeros(784, np.float32)), "headers": NPY}, 422, "shape"),
    (
        "npy empty batch",
        "/encode",
        {"content": npy_bytes(np.zeros((0, 28, 28), np.uint8)), "headers": NPY},
        422,
        "no images",
    ),
    (
        "npy NaN",
        "/encode",
        {"content": npy_bytes(np.full((1, 28, 28), np.nan, np.float32)), "headers": NPY},
        422,
        "NaN",
    ),
    ("npy Inf", "/encode", {"content": npy_bytes(np.full((1, 28, 28), np.inf)), "headers": NPY}, 422, "infinite"),
    ("npy truncated", "/encode", {"content": npy_bytes(ZEROS)[:-10], "headers": NPY}, 400, "truncated"),
    ("not an image", "/classify", multipart(b"hello, not an image"), 400, "not an image"),
    ("truncated png", "/classify", multipart(truncated_png()), 400, "truncated"),
    ("gzip as image", "/classify", multipart(gzip.compress(b"x" * 100)), 400, "not an image"),
    (
        "multipart without file part",
        "/classify",
        {"files": [("other", ("a.png", png_bytes(ZEROS[0]), "image/png"))]},
        422,
        "file",
    ),
    ("unknown model", "/encode", {"json": as_json(ZEROS), "params": {"model": "mnist-nope"}}, 404, "unknown model"),
    ("unknown dataset", "/encode", {"json": as_json(ZEROS), "params": {"dataset": "cifar10"}}, 404, "dataset"),
    (
        "model not serving endpoint",
        "/classify",
        {"json": as_json(ZEROS), "params": {"model": "mnist-stacked"}},
        404,
        "does not serve /classify",
    ),
    (
        "no model for dataset",
        "/denoise",
        {"json": as_json(ZEROS), "params": {"dataset": "fashion-mnist"}},
        404,
        "no model serves /denoise",
    ),
    (
        "model of another dataset",
        "/encode",
        {"json": as_json(ZEROS), "params": {"model": "mnist-stacked", "dataset": "fashion-mnist"}},
        400,
        "mnist model",
    ),
    ("noise_std over 2", "/denoise", {"json": as_json(ZEROS), "params": {"noise_std": 5}}, 422, "noise_std"),
    ("noise_std not a number", "/denoise", {"json": as_json(ZEROS), "params": {"noise_std": "lots"}}, 422, "noise_std"),
    ("bad preprocess", "/classify", {"json": as_json(ZEROS), "params": {"preprocess": "magic"}}, 422, "preprocess"),
    ("png asked of classify", "/classify", {"json": as_json(ZEROS), "headers": {"accept": "image/png"}}, 406, "offers"),
    ("version without a model", "/encode", {"json": as_json(ZEROS), "params": {"version": "1"}}, 422, "version"),
    (
        "version not a number",
        "/denoise",
        {"json": as_json(ZEROS), "params": {"model": "mnist-conv-denoiser", "version": "two"}},
        422,
        "version",
    ),
    (
        "version not served",
        "/denoise",
        {"json": as_json(ZEROS), "params": {"model": "mnist-conv-denoiser", "version": "99"}},
        404,
        "no version 99",
    ),
    (
        "query parameter as a form field",
        "/classify",
        multipart(png_bytes(ZEROS[0])) | {"data": {"preprocess": "none"}},
        422,
        "preprocess: query parameters, not form fields",
    ),
    (
        "npy asked of cluster",
        "/cluster",
        {"json": as_json(ZEROS), "headers": {"accept": "application/x-npy"}},
        406,
        "offers",
    ),
]


def test_the_form_fields_refused_are_the_query_parameters_read():
    # app.inputs cannot import app.inference (which imports it): one list each, held equal here
    from dataclasses import fields

    from app.inference import Params
    from app.inputs import QUERY_PARAMETERS

    assert {field.name for field in fields(Params)} == QUERY_PARAMETERS


@pytest.mark.parametrize(("endpoint", "kwargs", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_client_errors(client, endpoint, kwargs, status, words):
    response = await client.post(endpoint, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and words in body["error"]
    assert "Traceback" not in body["error"] and "/work" not in body["error"] and ".py" not in body["error"]
    # and the server keeps serving its neighbours
    assert (await client.post("/encode", content=npy_bytes(ZEROS), headers=NPY)).status_code == 200


async def test_unknown_route_and_method(client):
    missing = await client.get("/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = await client.get("/encode")
    assert wrong.status_code == 405 and "error" in wrong.json()
    assert (await client.get("/models/mnist-nope")).status_code == 404


async def _post(app, *args, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        return await http.post(*args, **kwargs)


async def test_limits_from_settings():
    app = ready_app(max_batch=4, max_body_bytes=20_000, max_image_pixels=10_000)
    too_many = await _post(app, "/encode", content=npy_bytes(np.zeros((5, 28, 28), np.uint8)), headers=NPY)
    assert too_many.status_code == 413 and "limit is 4" in too_many.json()["error"]
    json_too_many = await _post(app, "/encode", json={"images": [[0] * 784] * 5})
    assert json_too_many.status_code == 413
    files_too_many = await _post(app, "/encode", **multipart(*[png_bytes(ZEROS[0])] * 5))
    assert files_too_many.status_code == 413
    big_body = await _post(app, "/encode", content=npy_bytes(np.zeros((4, 28, 28), np.float64)), headers=NPY)
    assert big_body.status_code == 413 and "20000" in big_body.json()["error"]
    big_image = await _post(app, "/encode", **multipart(png_bytes(np.zeros((101, 100), np.uint8))))
    assert big_image.status_code == 413 and "10100 pixels" in big_image.json()["error"]
    at_limit = await _post(app, "/encode", content=npy_bytes(np.zeros((4, 28, 28), np.uint8)), headers=NPY)
    assert at_limit.status_code == 200


async def test_body_over_limit_is_refused_while_streaming():
    app = ready_app(max_body_bytes=10_000)
    sent = []

    async def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"\x00" * 1000

    response = await _post(app, "/encode", content=chunks(), headers=NPY)
    assert response.status_code == 413
    assert len(sent) < 100  # stopped reading long before the end


async def test_not_ready_is_503_with_reason():
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(models_dir=MODELS_DIR))  # models not loaded yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and "loading" in ready.json()["error"]
        assert (await http.get("/healthz")).status_code == 200
        busy = await http.post("/encode", content=npy_bytes(ZEROS), headers=NPY)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"


async def test_corrupt_model_is_reported_not_skipped(tmp_path):
    import shutil

    for name in ("mnist-stacked", "mnist-pretrained-classifier"):
        shutil.copytree(MODELS_DIR / name, tmp_path / name)
    variables = tmp_path / "mnist-stacked" / "1" / "variables" / "variables.data-00000-of-00001"
    variables.write_bytes(variables.read_bytes()[:-8] + b"corrupt!")
    app = ready_app(models_dir=tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and "mnist-stacked/1" in ready.json()["error"]
        assert "sha256" in ready.json()["error"]
        listed = {m["name"]: m for m in (await http.get("/models")).json()["models"]}
        assert listed["mnist-stacked"]["status"] == "failed" and "sha256" in listed["mnist-stacked"]["reason"]
        assert listed["mnist-pretrained-classifier"]["status"] == "ready"
        named = await http.post("/encode", params={"model": "mnist-stacked"}, content=npy_bytes(ZEROS), headers=NPY)
        assert named.status_code == 503 and "sha256" in named.json()["error"]
        other = await http.post("/classify", content=npy_bytes(ZEROS), headers=NPY)
        assert other.status_code == 200


async def test_manifest_without_threshold_is_refused(tmp_path):
    import json
    import shutil

    shutil.copytree(MODELS_DIR / "mnist-stacked", tmp_path / "mnist-stacked")
    manifest_path = tmp_path / "mnist-stacked" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["in_distribution"]
    manifest_path.write_text(json.dumps(manifest))
    app = ready_app(models_dir=tmp_path)
    state = app.state.registry.states[("mnist-stacked", 1)]
    assert state.status == "failed" and "in_distribution" in state.reason


async def test_missing_models_dir_is_reported(tmp_path):
    app = ready_app(models_dir=tmp_path / "absent")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and "does not exist" in ready.json()["error"]


def test_openapi_documents_every_input_form_and_error(committed_app):
    spec = committed_app.openapi()
    for endpoint in ("/encode", "/reconstruct", "/denoise", "/classify", "/cluster"):
        post = spec["paths"][endpoint]["post"]
        assert set(post["requestBody"]["content"]) == {"multipart/form-data", "application/json", "application/x-npy"}
        assert post["requestBody"]["content"]["application/json"]["examples"]
        assert {"400", "404", "413", "415", "422", "503"} <= set(post["responses"])
    assert "image/png" in spec["paths"]["/reconstruct"]["post"]["responses"]["200"]["content"]
