"""The service as users run it: a real uvicorn process on loopback, one and two workers."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from helpers import photo_of_digit

import aeserve
from scripts import local_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [1, 2])
def test_real_server(workers, tmp_path):
    log_path = tmp_path / "uvicorn.log"
    log = log_path.open("w")
    env = {"AESERVE_ACCESS_LOG": "all"}
    process, base, _ = local_server.start("app.main:app", "--workers", str(workers), log=log, env=env)
    try:
        with httpx.Client(base_url=base, timeout=30) as http, aeserve.Client(base, retries=60) as client:
            # each worker loads its models on its own, and one still loading answers 503 with Retry-After
            # even after another has answered /readyz: the client asks again
            for _ in range(2 * workers):
                assert client.classify(photo_of_digit(7)).labels.tolist() == [7]
            assert http.post("/encode", content=b"{", headers={"content-type": "application/json"}).status_code == 400
            docs = http.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            assert http.get("/openapi.json").json()["info"]["title"] == "aeserve"
            if workers == 1:
                documented_client_calls(base)
                request_id = http.get("/healthz", headers={"X-Request-ID": "e2e-1"}).headers["x-request-id"]
                assert request_id == "e2e-1"
    finally:
        code = local_server.stop(process)
        log.close()
    # a graceful stop exits 0 (app.serve: uvicorn itself would re-raise SIGTERM in a single-process server)
    assert code == 0
    text = log_path.read_text()
    assert "Application shutdown complete" in text, (log_path, len(text))
    if workers == 1:  # every line is JSON, LiteRT's native announcement included (a supervisor writes its own)
        assert all(line.startswith("{") for line in text.splitlines() if line.strip()), text[:2000]
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["message"] == "Application startup complete." for line in lines)  # uvicorn's, as JSON
    access = [line for line in lines if line["logger"] == "aeserve.access"]
    assert access and all({"request_id", "route", "status", "duration_ms"} <= set(line) for line in access)
    if workers == 1:
        assert any(line["request_id"] == "e2e-1" and line["path"] == "/healthz" for line in access)


def documented_client_calls(base: str) -> None:
    """TF Serving's tutorial client and the V2 protocol's example request, as their documentation writes
    them (with ``requests``), the model name changed and the tensors made MNIST digits: both get the
    codes ``/encode`` gives."""
    import requests

    test_images = np.stack([mnist_style_digit(d) for d in (0, 1, 7)])[..., None]  # (3, 28, 28, 1) in 0..1
    expected = httpx.post(f"{base}/encode?model=mnist-stacked", json={"images": test_images[..., 0].tolist()})
    codes = np.array(expected.json()["codes"])

    data = json.dumps({"signature_name": "serving_default", "instances": test_images[0:3].tolist()})
    headers = {"content-type": "application/json"}
    json_response = requests.post(f"{base}/v1/models/mnist-stacked:predict", data=data, headers=headers)
    predictions = json.loads(json_response.text)["predictions"]
    np.testing.assert_allclose([p["codes"] for p in predictions], codes, atol=1e-6)

    infer_request = {
        "id": "42",
        "inputs": [
            {"name": "input-0", "shape": [3, 784], "datatype": "FP32", "data": test_images.reshape(3, 784).tolist()}
        ],
        "outputs": [{"name": "codes"}],
    }
    response = requests.post(f"{base}/v2/models/mnist-stacked/infer", json=infer_request)
    (output,) = response.json()["outputs"]
    assert response.json()["id"] == "42"
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), codes, atol=1e-6)


def mnist_style_digit(digit: int) -> np.ndarray:
    """A drawn digit made 28x28 as the service makes uploads, in 0..1."""
    from app.imaging import decode_image, mnist_style

    return mnist_style(decode_image(photo_of_digit(digit), 10**6))
