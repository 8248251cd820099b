"""aeserve.Client and aeserve.AsyncClient against the real service under uvicorn, beside the raw HTTP calls.

One server for the module, with low limits (8 images, 20000 bytes a request) so that batching shows; the
retry tests run a tiny ASGI app that answers 503 with Retry-After (tests/retry_stub.py).
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import npy_bytes, png_bytes

import aeserve
from scripts import local_server

ROOT = Path(__file__).resolve().parent.parent
MAX_BATCH, MAX_BODY = 8, 20000
ENDPOINTS = ("encode", "reconstruct", "denoise", "classify", "cluster")
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def service():
    process, base, _ = local_server.start(
        env={"AESERVE_MAX_BATCH": str(MAX_BATCH), "AESERVE_MAX_BODY_BYTES": str(MAX_BODY)}
    )
    yield base
    local_server.stop(process)


@pytest.fixture(scope="module")
def client(service):
    with aeserve.Client(service) as client:
        yield client


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Eight different drawn digits, uint8 ``[8,28,28]`` (the committed examples, shifted)."""
    drawn = np.load(ROOT / "examples" / "digits.npy")
    return np.concatenate([np.roll(drawn, shift, axis=2) for shift in (0, 2, -2)])[:8]


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory) -> list[Path]:
    """Three small PNG files: the digits drawn dark on white at 84x84, so MNIST-style preprocessing applies."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, digit in enumerate(digits[:3]):
        path = folder / f"digit{i}.png"
        path.write_bytes(png_bytes(255 - np.kron(digit, np.ones((3, 3), np.uint8))))
        paths.append(path)
    return paths


def raw(base: str, endpoint: str, query: dict | None = None, array=None, files=None, accept=None) -> httpx.Response:
    """The request a user would write by hand: an ``.npy`` body or multipart parts named ``file``."""
    headers = {"accept": accept} if accept else {}
    if array is not None:
        return httpx.post(
            f"{base}/{endpoint}",
            params=query,
            content=npy_bytes(array),
            headers=headers | {"content-type": "application/x-npy"},
            timeout=30,
        )
    parts = [
        (
            "file",
            (f"image{i}", f, "application/octet-stream")
            if isinstance(f, bytes)
            else (f.name, f.read_bytes(), "image/png"),
        )
        for i, f in enumerate(files)
    ]
    return httpx.post(f"{base}/{endpoint}", params=query, files=parts, headers=headers, timeout=30)


def f32(values) -> np.ndarray:
    return np.asarray(values, np.float32)


def assert_same(result: aeserve.Result, endpoint: str, answer: dict) -> None:
    """The client's result holds exactly the numbers of the service's JSON answer."""
    assert (result.model, result.version) == (answer["model"], answer["version"])
    if endpoint == "encode":
        np.testing.assert_array_equal(result.codes, f32(answer["codes"]))
        assert result.codes.dtype == np.float32
    elif endpoint == "reconstruct":
        np.testing.assert_array_equal(result.images, f32(answer["images"]))
        np.testing.assert_array_equal(result.errors, f32(answer["errors"]))
        assert result.in_distribution.tolist() == answer["in_distribution"]
    elif endpoint == "denoise":
        np.testing.assert_array_equal(result.images, f32(answer["images"]))
        if "noisy" in answer:
            np.testing.assert_array_equal(result.noisy, f32(answer["noisy"]))
        else:
            assert result.noisy is None
    elif endpoint == "classify":
        predictions = answer["predictions"]
        assert result.labels.tolist() == [p["label"] for p in predictions]
        assert result.class_names == [p["class_name"] for p in predictions]
        np.testing.assert_array_equal(result.confidences, f32([p["confidence"] for p in predictions]))
        np.testing.assert_array_equal(result.probabilities, f32([p["probabilities"] for p in predictions]))
    else:
        assignments = answer["assignments"]
        assert result.clusters.tolist() == [a["cluster"] for a in assignments]
        np.testing.assert_array_equal(result.scores, f32([a[result.score_kind] for a in assignments]))
        assert result.label_hints == [a["label_hint"] for a in assignments]
        assert result.scores.shape[1] == answer["n_clusters"]
    assert len(result) == len(next(v for v in answer.values() if isinstance(v, list)))


# Each input form: what the client is given, and the raw request that carries the same images.
FORMS = {
    "one 28x28 uint8 array": lambda d, f: (d[0], {"array": d[0]}),
    "uint8 [N,28,28]": lambda d, f: (d, {"array": d}),
    "float64 [N,28,28] in 0..1": lambda d, f: (d[:3] / 255.0, {"array": d[:3] / 255.0}),
    "float32 [N,28,28] in 0..1": lambda d, f: (f32(d[:3]) / 255, {"array": f32(d[:3]) / 255}),
    "list of arrays": lambda d, f: (list(d[:3]), {"array": d[:3]}),
    "a path as str": lambda d, f: (str(f[0]), {"files": f[:1]}),
    "a Path": lambda d, f: (f[1], {"files": f[1:2]}),
    "bytes of a file": lambda d, f: (f[2].read_bytes(), {"files": [f[2].read_bytes()]}),
    "list of paths": lambda d, f: (f, {"files": f}),
    "list of bytes": lambda d, f: ([p.read_bytes() for p in f], {"files": [p.read_bytes() for p in f]}),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_method_and_input_form_gives_the_raw_answer(service, client, digits, files, endpoint, form):
    given, request = FORMS[form](digits, files)
    result = getattr(client, endpoint)(given)
    answer = raw(service, endpoint, **request)
    assert answer.status_code == 200, answer.text
    assert_same(result, endpoint, answer.json())
    assert type(result).__name__ == endpoint.capitalize() + "Result"


def test_arrays_come_back_as_npy_where_offered(service, client, digits):
    """/encode and /denoise answer the client in .npy: the same arrays as a raw request with that Accept."""
    for endpoint, values in (("encode", lambda r: r.codes), ("denoise", lambda r: r.images)):
        answer = raw(service, endpoint, array=digits, accept="application/x-npy")
        assert answer.headers["content-type"] == "application/x-npy"
        expected = np.load(io.BytesIO(answer.content), allow_pickle=False)
        np.testing.assert_array_equal(values(getattr(client, endpoint)(digits)), expected)


def test_query_parameters(service, client, digits, files):
    cases = [
        ("classify", digits, {"dataset": "fashion-mnist"}),
        ("reconstruct", digits, {"model": "mnist-stacked", "version": 1}),
        ("encode", files, {"model": "mnist-kmeans", "preprocess": "none"}),
        ("cluster", files, {"dataset": "fashion-mnist", "preprocess": "none"}),
        ("denoise", digits, {"noise_std": 0.6, "seed": 1}),
        ("denoise", files, {"model": "mnist-denoising", "noise_std": 0.3, "seed": 7, "preprocess": "mnist"}),
    ]
    for endpoint, images, query in cases:
        result = getattr(client, endpoint)(images, **query)
        request = {"array": images} if isinstance(images, np.ndarray) else {"files": images}
        answer = raw(service, endpoint, query, **request)
        assert answer.status_code == 200, answer.text
        assert_same(result, endpoint, answer.json())
    assert client.classify(digits, dataset="fashion-mnist").class_names[0] in {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
    }  # fmt: skip


def test_a_batch_over_the_limits_is_split_and_joined(service, client, digits):
    big = np.concatenate([np.roll(digits, k, axis=1) for k in range(3)])[:21]  # 21 images; the service takes 8
    assert raw(service, "classify", array=big).status_code == 413
    assert client.limits() == aeserve.Limits(MAX_BATCH, MAX_BODY, 16_000_000)
    for images, size in ((big, 8), (f32(big) / 255, (MAX_BODY - 256) // (784 * 4))):
        for endpoint in ENDPOINTS:
            seen = []
            result = getattr(client, endpoint)(
                images, progress=lambda done, total, seen=seen: seen.append((done, total))
            )
            starts = range(0, len(images), size)
            assert seen == [(min(start + size, len(images)), len(images)) for start in starts]
            answers = [raw(service, endpoint, array=images[start : start + size]).json() for start in starts]
            parts = [getattr(client, endpoint)(images[start : start + size]) for start in starts]
            assert len(result) == len(images)
            for part, answer in zip(parts, answers, strict=True):
                assert_same(part, endpoint, answer)
            joined = aeserve.results.join(parts)
            for name, value in vars(result).items():
                if isinstance(value, np.ndarray):
                    np.testing.assert_array_equal(value, getattr(joined, name))
                else:
                    assert value == getattr(joined, name)


def test_files_over_the_limits_are_split(service, client, files):
    many = files * 4  # 12 files; the service takes 8 a request
    seen = []
    result = client.classify(many, progress=lambda done, total: seen.append(done))
    assert seen == [8, 12]
    answer = raw(service, "classify", files=files).json()
    assert result.labels.tolist() == [p["label"] for p in answer["predictions"]] * 4


def test_errors_carry_the_service_message(service, client, digits, files):
    big_file = png_bytes(np.random.default_rng(0).integers(0, 256, (160, 160), dtype=np.uint8))
    assert len(big_file) > MAX_BODY
    cases = [
        ("classify", digits, {"model": "mnist-unknown"}, {"array": digits}),
        ("encode", np.zeros((5, 5), np.float32), {}, {"array": np.zeros((5, 5), np.float32)}),
        ("encode", digits[:2].astype(np.int64), {}, {"array": digits[:2].astype(np.int64)}),
        ("reconstruct", digits, {"version": 2}, {"array": digits}),
        ("denoise", digits, {"noise_std": 5.0}, {"array": digits}),
        ("cluster", files, {"model": "mnist-conv-classifier"}, {"files": files}),
        ("classify", big_file, {}, {"files": [big_file]}),
        ("classify", b"not an image", {}, {"files": [b"not an image"]}),
    ]
    for endpoint, images, query, request in cases:
        answer = raw(service, endpoint, query, **request)
        with pytest.raises(aeserve.ApiError) as caught:
            getattr(client, endpoint)(images, **query)
        assert caught.value.status == answer.status_code >= 400
        assert caught.value.message == answer.json()["error"]
        assert str(caught.value) == f"{answer.status_code}: {answer.json()['error']}"


def test_inputs_the_client_cannot_send(client, digits, files):
    with pytest.raises(TypeError, match="not of both"):
        client.encode([files[0], digits[0]])
    with pytest.raises(ValueError, match="no images"):
        client.encode([])
    with pytest.raises(FileNotFoundError):
        client.encode(files[0].with_name("missing.png"))


def test_models_ready_health(service, client):
    listing = client.models()
    assert listing == httpx.get(f"{service}/models").json()
    assert listing["limits"] == {
        "max_batch": MAX_BATCH,
        "max_body_bytes": MAX_BODY,
        "max_image_pixels": 16_000_000,
        "max_request_pixels": 64_000_000,
        "max_image_scans": 64,
        "decode_cpu_ms": 2000,
    }
    assert client.ready() is True
    assert client.health() is True


def test_api_key(digits):
    process, base, _ = local_server.start(env={"AESERVE_API_KEY": "s3cret"})
    try:
        with aeserve.Client(base, api_key="s3cret") as client:
            assert client.classify(digits).labels.tolist() == [0, 1, 7, 0, 1, 7, 0, 1]
        with aeserve.Client(base) as client, pytest.raises(aeserve.ApiError) as caught:
            client.classify(digits)
        assert caught.value.status == 401
        assert caught.value.message == "this service needs an API key: send Authorization: Bearer <key>"
    finally:
        local_server.stop(process)


@pytest.fixture(scope="module")
def stub():
    process, base, _ = local_server.start("retry_stub:app", "--app-dir", str(ROOT / "tests"))
    yield base
    local_server.stop(process)


def asked(base: str, name: str) -> int:
    return httpx.get(f"{base}/asked", params={"model": name}).json()["asked"]


def test_503_with_retry_after_is_retried(stub, digits):
    with aeserve.Client(stub, retries=3) as client:
        result = client.classify(digits[:1], model="busy-3")  # three 503s, then the answer
        assert (result.model, result.labels.tolist()) == ("busy-3", [3])
        assert asked(stub, "busy-3") == 4
        assert client.classify(digits[:1], model="date-2").labels.tolist() == [3]  # Retry-After as an HTTP date
        with pytest.raises(aeserve.ApiError) as caught:
            client.classify(digits[:1], model="busy-4")  # one more than the client retries
        assert (caught.value.status, caught.value.message) == (503, "models are still loading")
        assert asked(stub, "busy-4") == 4
        with pytest.raises(aeserve.ApiError):
            client.classify(digits[:1], model="bare-1")  # a 503 without Retry-After is not retried
        assert asked(stub, "bare-1") == 1
        started = time.monotonic()
        client.classify(digits[:1], model="slow-1")
        assert time.monotonic() - started >= 1.0  # waited the second Retry-After names
    with aeserve.Client(stub, retries=0) as client, pytest.raises(aeserve.ApiError):
        client.classify(digits[:1], model="busy-1")


async def test_async_client_retries(stub, digits):
    async with aeserve.AsyncClient(stub, retries=2) as client:
        results = await asyncio.gather(*(client.classify(digits[:1], model=f"busy-a{i}-2") for i in range(4)))
    assert [r.labels.tolist() for r in results] == [[3]] * 4


async def test_async_client_under_concurrent_use(service, client, digits, files):
    """Many calls at once on one AsyncClient, every method and input form: the sync client's numbers."""
    big = np.concatenate([digits, digits[::-1], digits[:5]])  # 21 images: three requests each
    calls = [(endpoint, images) for endpoint in ENDPOINTS for images in (digits, files, big, files[0], digits[3])]
    expected = [getattr(client, endpoint)(images) for endpoint, images in calls]
    async with aeserve.AsyncClient(service) as async_client:
        assert await async_client.ready() and await async_client.health()
        assert (await async_client.limits()).max_batch == MAX_BATCH
        results = await asyncio.gather(*(getattr(async_client, e)(images) for e, images in calls * 2))
        listing = await async_client.models()
    assert listing["limits"]["max_batch"] == MAX_BATCH
    for got, want in zip(results, expected * 2, strict=True):
        assert type(got) is type(want) and (got.model, got.version) == (want.model, want.version)
        for name, value in vars(want).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(got, name), value)
            else:
                assert getattr(got, name) == value


async def test_async_errors_carry_the_service_message(service, digits):
    async with aeserve.AsyncClient(service) as client:
        with pytest.raises(aeserve.ApiError) as caught:
            await client.encode(digits, model="mnist-unknown")
    assert caught.value.status == 404
    assert caught.value.message == "unknown model 'mnist-unknown'; GET /models lists the models served"


def test_importing_the_client_loads_no_service_training_or_runtime():
    code = (
        "import sys, aeserve, aeserve.cli; "
        "heavy = {'app', 'training', 'tensorflow', 'keras', 'ai_edge_litert', 'tflite_runtime', 'fastapi', 'uvicorn'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
