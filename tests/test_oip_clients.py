"""The Open Inference Protocol as its own clients speak it: Triton's and KServe's Python clients, over
REST (binary tensor data) and gRPC, each with its default settings, against a real server; their
numbers are the five endpoints' to the bit. Then the gRPC service's lifecycle: API key and metrics,
several workers on one port, and a graceful drain on SIGTERM.

Each client runs in its own process (tests/oip_client.py): tritonclient.grpc and kserve register the
same protobuf names, so neither can share a process with the other or with the server's stubs.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from conftest import MODELS_DIR, ROOT
from helpers import npy_bytes

from scripts import local_server

CLASSIFIER, AUTOENCODER = "mnist-pretrained-classifier", "mnist-conv"
CLIENTS = ("triton-http", "triton-grpc", "kserve-rest", "kserve-grpc")
NPY = {"content-type": "application/x-npy"}


def models_folder(tmp_path: Path, *names: str) -> Path:
    """A models folder serving only ``names`` (links to the committed ones): a server that starts fast."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(MODELS_DIR / name, target_is_directory=True)
    return folder


def stubs():
    """The server's own gRPC stubs (imported late: see the module docstring)."""
    from app.protocols.oip import grpc_predict_v2_pb2 as pb
    from app.protocols.oip import grpc_predict_v2_pb2_grpc as pb_grpc

    return pb, pb_grpc


def infer_request(images: np.ndarray, model: str, outputs: tuple[str, ...] = ()):
    pb, _ = stubs()
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[images.astype("<f4").tobytes()])
    request.inputs.add(name="images", datatype="FP32", shape=images.shape)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def test_committed_stubs_are_generated_from_their_proto(tmp_path):
    """``make grpc-stubs`` (grpcio-tools of the dev extra) makes the committed stubs byte for byte."""
    oip = Path("app", "protocols", "oip")
    outputs = [f"--{kind}_out={tmp_path}" for kind in ("python", "pyi", "grpc_python")]
    protoc = [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", *outputs, str(oip / "grpc_predict_v2.proto")]
    done = subprocess.run(protoc, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    generated = sorted((tmp_path / oip).iterdir())
    assert [path.name for path in generated] == sorted(p.name for p in (ROOT / oip).glob("grpc_predict_v2_pb2*"))
    for path in generated:
        assert path.read_bytes() == (ROOT / oip / path.name).read_bytes(), f"{path.name}: run make grpc-stubs"


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The committed example digits (0, 1 and 7) as a float32 batch in 0..1."""
    return (np.load(ROOT / "examples" / "digits.npy", allow_pickle=False) / 255.0).astype(np.float32)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real server of the classifier and the autoencoder: its HTTP base and its gRPC address."""
    folder = tmp_path_factory.mktemp("oip")
    grpc_port = local_server.free_port()
    env = {
        "AESERVE_MODELS_DIR": str(models_folder(folder, CLASSIFIER, AUTOENCODER)),
        "AESERVE_GRPC_PORT": str(grpc_port),
    }
    with (folder / "uvicorn.log").open("w") as log:
        process, base, _ = local_server.start("app.main:app", env=env, log=log)
        try:
            yield base, f"127.0.0.1:{grpc_port}"
        finally:
            local_server.stop(process)


@pytest.fixture(scope="module")
def endpoints(served, digits) -> dict[str, dict[str, np.ndarray]]:
    """What the five endpoints answer for the digits (``.npy`` in, and out where offered), per model."""
    base, _ = served
    with httpx.Client(base_url=base, timeout=60) as http:

        def post(path: str, **kwargs) -> httpx.Response:
            answer = http.post(path, content=npy_bytes(digits), headers=NPY | kwargs.get("headers", {}))
            assert answer.status_code == 200, answer.text
            return answer

        def npy(path: str) -> np.ndarray:
            return np.load(io.BytesIO(post(path, headers={"accept": "application/x-npy"}).content))

        classified = post(f"/classify?model={CLASSIFIER}").json()["predictions"]
        clustered = post(f"/cluster?model={AUTOENCODER}").json()["assignments"]
        return {
            CLASSIFIER: {
                "codes": npy(f"/encode?model={CLASSIFIER}"),
                "probabilities": np.array([p["probabilities"] for p in classified], dtype=np.float32),
            },
            AUTOENCODER: {
                "codes": npy(f"/encode?model={AUTOENCODER}"),
                "reconstruction": npy(f"/reconstruct?model={AUTOENCODER}"),
                "distances": np.array([a["distances"] for a in clustered], dtype=np.float32),
                "cluster": np.array([a["cluster"] for a in clustered], dtype=np.int32),
            },
        }


def run_client(kind: str, address: str, digits: np.ndarray, folder: Path, *models: str) -> list[dict]:
    np.save(folder / "digits.npy", digits)
    done = subprocess.run(
        [sys.executable, ROOT / "tests" / "oip_client.py", kind, address, folder / "digits.npy", folder, *models],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", CLIENTS)
def test_client_with_its_defaults_answers_as_the_endpoints(kind, served, endpoints, digits, tmp_path):
    base, grpc_address = served
    address = grpc_address if kind.endswith("grpc") else base.removeprefix("http://")
    described = run_client(kind, address, digits, tmp_path, CLASSIFIER, AUTOENCODER)
    for model, answer in zip((CLASSIFIER, AUTOENCODER), described, strict=True):
        assert answer["model"] == model
        assert answer["version"] == "1" or kind == "kserve-rest"  # KServe's REST client drops model_version
        outputs = dict(np.load(tmp_path / f"{model}.npz"))
        assert set(outputs) == set(endpoints[model]) | ({"reconstruction"} if model == AUTOENCODER else set())
        for name, expected in endpoints[model].items():
            assert outputs[name].dtype == expected.dtype, (model, name)
            np.testing.assert_array_equal(outputs[name], expected, err_msg=f"{kind} {model} {name}")
        assert answer["datatypes"]["codes"] == "FP32"
        if model == AUTOENCODER:
            assert answer["datatypes"]["cluster"] == "INT32"
        if kind.startswith("triton"):  # tritonclient asks for binary outputs by default
            assert answer["binary_outputs"]


@pytest.mark.slow
def test_grpc_answers_equal_the_rest_json_answers(served, digits):
    base, address = served
    tensor = {"name": "images", "shape": list(digits.shape), "datatype": "FP32", "data": digits.ravel().tolist()}
    body = httpx.post(f"{base}/v2/models/{AUTOENCODER}/infer", json={"inputs": [tensor]}, timeout=60).json()
    dtypes = {"FP32": "<f4", "INT32": "<i4"}
    rest = {o["name"]: np.array(o["data"], dtype=dtypes[o["datatype"]]) for o in body["outputs"]}
    _, pb_grpc = stubs()
    with grpc.insecure_channel(address) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(digits, AUTOENCODER), timeout=60)
    assert [o.name for o in answer.outputs] == sorted(rest)
    for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True):
        assert list(output.shape) == next(o["shape"] for o in body["outputs"] if o["name"] == output.name)
        np.testing.assert_array_equal(np.frombuffer(raw, dtypes[output.datatype]), rest[output.name])


@pytest.mark.anyio
async def test_grpc_api_key_and_metrics(tmp_path):
    """In process, no model loaded: the key is asked of every RPC but the probes, and each call is counted."""
    from app.main import create_app
    from app.protocols import grpc_v2
    from app.settings import Settings

    port = local_server.free_port()
    app = create_app(Settings(models_dir=tmp_path, api_key="s3cret", grpc_port=port, access_log="off"))
    server = await grpc_v2.start(app)
    pb, pb_grpc = stubs()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(pb.ServerLiveRequest())).live
            assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
            for metadata, says in ((None, "needs an API key"), ((("authorization", "Bearer nope"),), "wrong")):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ModelMetadata(pb.ModelMetadataRequest(name=AUTOENCODER), metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and says in refused.value.details()
            key = (("authorization", "Bearer s3cret"), ("x-request-id", "grpc-1"))
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.ModelMetadata(pb.ModelMetadataRequest(name=AUTOENCODER), metadata=key)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model" in unknown.value.details()
            assert ("x-request-id", "grpc-1") in tuple(unknown.value.trailing_metadata())
    finally:
        await server.stop(None)
    counted = app.state.metrics.registry.get_sample_value
    labels = {"method": "GRPC", "route": "/inference.GRPCInferenceService/ModelMetadata", "model": ""}
    assert counted("aeserve_requests_total", labels | {"status": "401"}) == 2
    assert counted("aeserve_requests_total", labels | {"status": "404"}) == 1
    assert (
        counted(
            "aeserve_requests_total", labels | {"route": "/inference.GRPCInferenceService/ServerLive", "status": "200"}
        )
        == 1
    )


@pytest.mark.slow
def test_two_workers_serve_grpc_on_one_port(tmp_path, digits):
    port = local_server.free_port()
    env = {"AESERVE_MODELS_DIR": str(models_folder(tmp_path, AUTOENCODER)), "AESERVE_GRPC_PORT": str(port)}
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("w") as log:
        process, _, _ = local_server.start("app.main:app", "--workers", "2", env=env, log=log)
        try:
            _, pb_grpc = stubs()
            deadline = time.monotonic() + 60
            answered = 0
            while answered < 6 and time.monotonic() < deadline:  # a new connection each: either worker may take it
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    try:
                        answer = stub.ModelInfer(infer_request(digits, AUTOENCODER, ("codes",)), timeout=30)
                    except grpc.RpcError as exc:  # the other worker may still be loading
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                        time.sleep(0.2)
                        continue
                    (codes,) = answer.outputs
                    assert codes.name == "codes" and list(codes.shape) == [len(digits), 196]
                    answered += 1
            assert answered == 6
        finally:
            assert local_server.stop(process) == 0
    assert log_path.read_text().count("Open Inference Protocol over gRPC on") == 2


@pytest.mark.slow
def test_sigterm_lets_grpc_calls_in_flight_finish(tmp_path):
    port = local_server.free_port()
    env = {"AESERVE_MODELS_DIR": str(models_folder(tmp_path, AUTOENCODER)), "AESERVE_GRPC_PORT": str(port)}
    batch = np.random.default_rng(0).random((1024, 28, 28), dtype=np.float32)
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("w") as log:
        process, _, _ = local_server.start("app.main:app", env=env, log=log)
        finished: list[tuple[float, grpc.StatusCode]] = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _, pb_grpc = stubs()
            infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            infer(infer_request(batch[:1], AUTOENCODER), timeout=30)  # connected
            calls = [infer.future(infer_request(batch, AUTOENCODER), timeout=60) for _ in range(8)]
            for call in calls:
                call.add_done_callback(lambda c: finished.append((time.monotonic(), c.code())))
            time.sleep(0.05)
            signalled = time.monotonic()
            code = local_server.stop(process)
            for call in calls:
                call.exception(timeout=60)
    assert code == 0
    assert len(finished) == 8 and all(status == grpc.StatusCode.OK for _, status in finished), finished
    assert any(at > signalled for at, _ in finished), "no call was still in flight at SIGTERM"
    assert "Application shutdown complete" in log_path.read_text()
