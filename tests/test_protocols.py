"""TensorFlow Serving's REST API and the Open Inference Protocol (KServe V2) over the committed models.

The requests are the ones those projects document, with the model name (and the tensors, to fit
these models) changed: TF Serving's "Train and serve a TensorFlow model with TensorFlow Serving"
tutorial, and the protocol's own inference request example (``id`` 42, an ``outputs`` selection).
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from helpers import multipart, npy_bytes, photo_of_digit

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MODEL = "mnist-stacked"


@pytest.fixture(scope="module")
def test_images(mnist_test):
    """Three test digits as the TF Serving tutorial prepares them: scaled to 0..1, a channel axis added."""
    images, _ = mnist_test
    return (images[:3] / 255.0).reshape(3, 28, 28, 1)


async def encode(client, images: np.ndarray, model: str = MODEL) -> np.ndarray:
    answer = await client.post(f"/encode?model={model}", content=npy_bytes(images.astype(np.float32)),
                               headers={"content-type": "application/x-npy"})
    assert answer.status_code == 200
    return np.array(answer.json()["codes"], dtype=np.float32)


# TensorFlow Serving


async def test_tf_serving_tutorial_request_gets_the_codes_of_encode(client, test_images):
    data = json.dumps({"signature_name": "serving_default", "instances": test_images[0:3].tolist()})
    headers = {"content-type": "application/json"}
    json_response = await client.post(f"/v1/models/{MODEL}:predict", content=data, headers=headers)
    predictions = json.loads(json_response.text)["predictions"]

    assert json_response.status_code == 200
    assert json_response.headers["x-model"] == MODEL and json_response.headers["x-model-version"] == "1"
    assert len(predictions) == 3 and set(predictions[0]) == {"codes", "reconstruction"}
    codes = np.array([p["codes"] for p in predictions], dtype=np.float32)
    np.testing.assert_allclose(codes, await encode(client, test_images.reshape(3, 28, 28)), atol=1e-6)
    assert np.array(predictions[0]["reconstruction"]).shape == (28, 28)


@pytest.mark.parametrize("form", ["named", "bare"])
async def test_tf_serving_columnar_inputs(client, test_images, form):
    images = test_images.reshape(3, 28, 28).tolist()
    inputs = {"images": images} if form == "named" else images
    answer = await client.post(f"/v1/models/{MODEL}/versions/1:predict", json={"inputs": inputs})
    assert answer.status_code == 200
    outputs = answer.json()["outputs"]
    assert set(outputs) == {"codes", "reconstruction"}
    np.testing.assert_allclose(outputs["codes"], await encode(client, np.array(images)), atol=1e-6)


async def test_tf_serving_b64_image_file_is_preprocessed_as_an_upload(client):
    png = photo_of_digit(7)
    body = {"instances": [{"b64": base64.b64encode(png).decode()}, {"images": {"b64": base64.b64encode(png).decode()}}]}
    answer = await client.post("/v1/models/mnist-pretrained-classifier:predict", json=body)
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    uploaded = await client.post("/encode?model=mnist-pretrained-classifier", **multipart(png))
    for prediction in predictions:
        np.testing.assert_allclose(prediction["codes"], uploaded.json()["codes"][0], atol=1e-6)
        assert int(np.argmax(prediction["probabilities"])) == 7


async def test_tf_serving_model_status_and_metadata(client, committed_app):
    status = await client.get(f"/v1/models/{MODEL}")
    assert status.status_code == 200
    available = {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert status.json() == {"model_version_status": [available]}
    assert (await client.get(f"/v1/models/{MODEL}/versions/1")).json() == status.json()
    # a version is read as a number wherever a path names it: status, metadata and predict alike
    assert (await client.get(f"/v1/models/{MODEL}/versions/01")).json() == status.json()
    superscript = await client.get(f"/v1/models/{MODEL}/versions/\u00b2")
    assert superscript.status_code == 404 and "whole numbers" in superscript.json()["error"]

    for path in (f"/v1/models/{MODEL}/metadata", f"/v1/models/{MODEL}/versions/1/metadata"):
        metadata = (await client.get(path)).json()
        assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        (name, tensor), = signature["inputs"].items()
        assert name == "images" and tensor["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in tensor["tensor_shape"]["dim"]] == ["-1", "28", "28"]
        manifest = committed_app.state.registry.get(MODEL).manifest
        assert set(signature["outputs"]) == set(manifest["outputs"])
        # the SavedModel's own tensor names, as TF Serving shows them, whichever runtime serves it
        assert tensor["name"] == manifest["tensor_names"]["inputs"]["images"] and ":" in tensor["name"]
        assert all(signature["outputs"][k]["name"] == v for k, v in manifest["tensor_names"]["outputs"].items())
        assert [d["size"] for d in signature["outputs"]["codes"]["tensor_shape"]["dim"]] == ["-1", "128"]


ZERO = [[0.0] * 28]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (f"/v1/models/{MODEL}:predict", {"signature_name": "predict_images", "instances": [ZERO * 28]}, 400),
        (f"/v1/models/{MODEL}:predict", {"instances": [ZERO * 28], "inputs": [ZERO * 28]}, 400),
        (f"/v1/models/{MODEL}:predict", {"signature_name": "serving_default"}, 400),
        (f"/v1/models/{MODEL}:predict", {"instances": [{"pixels": ZERO * 28}]}, 400),
        (f"/v1/models/{MODEL}:predict", {"inputs": {"pixels": ZERO * 28}}, 400),
        (f"/v1/models/{MODEL}:predict", {"instances": []}, 422),
        (f"/v1/models/{MODEL}:predict", {"instances": [[[255.0] * 28] * 28]}, 422),
        (f"/v1/models/{MODEL}:predict", {"instances": [ZERO * 27]}, 422),
        (f"/v1/models/{MODEL}:predict", {"instances": [ZERO * 28, ZERO * 27]}, 400),
        (f"/v1/models/{MODEL}:predict", {"instances": [[["a"] * 28] * 28]}, 400),
        (f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "not base64!"}]}, 400),
        (f"/v1/models/{MODEL}:predict", {"instances": [{"b64": base64.b64encode(b"GIF89a?").decode()}]}, 400),
        (f"/v1/models/{MODEL}:predict", [ZERO * 28], 400),
        (f"/v1/models/{MODEL}/versions/7:predict", {"instances": [ZERO * 28]}, 404),
        (f"/v1/models/{MODEL}/versions/latest:predict", {"instances": [ZERO * 28]}, 404),
        ("/v1/models/resnet:predict", {"instances": [ZERO * 28]}, 404),
    ],
    ids=[
        "unknown-signature", "instances-and-inputs", "neither", "unknown-input-name", "unknown-columnar-name",
        "no-instances", "over-range", "wrong-shape", "ragged", "strings", "bad-base64", "not-an-image",
        "not-an-object", "unknown-version", "version-not-a-number", "unknown-model",
    ],
)
async def test_tf_serving_errors(client, path, body, status):
    answer = await client.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and answer.json()["error"]


async def test_tf_serving_errors_on_bodies(client, committed_app):
    headers = {"content-type": "application/json"}
    not_json = await client.post(f"/v1/models/{MODEL}:predict", content=b"{", headers=headers)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    limit = committed_app.state.limits.max_body_bytes
    huge = await client.post(f"/v1/models/{MODEL}:predict", content=b" " * (limit + 1))
    assert huge.status_code == 413
    many = {"instances": [ZERO * 28] * (committed_app.state.limits.max_batch + 1)}
    assert (await client.post(f"/v1/models/{MODEL}:predict", json=many)).status_code == 413
    assert (await client.get("/v1/models/resnet")).status_code == 404
    assert (await client.get(f"/v1/models/{MODEL}/versions/3")).status_code == 404
    assert (await client.get("/v1/models/resnet/metadata")).status_code == 404


# Open Inference Protocol (KServe V2)


async def test_v2_protocol_example_request_gets_the_codes_of_encode(client, test_images):
    images = test_images.reshape(3, 28, 28)
    request = {
        "id": "42",
        "inputs": [{"name": "input0", "shape": [3, 784], "datatype": "FP32", "data": images.reshape(3, 784).tolist()}],
        "outputs": [{"name": "codes"}],
    }
    answer = await client.post(f"/v2/models/{MODEL}/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "42" and body["model_name"] == MODEL and body["model_version"] == "1"
    (output,) = body["outputs"]
    assert output["name"] == "codes" and output["datatype"] == "FP32" and output["shape"] == [3, 128]
    codes = np.array(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(codes, await encode(client, images), atol=1e-6)


async def test_v2_all_outputs_flat_data_and_uint8(client, mnist_test):
    images, _ = mnist_test
    tensor = {"name": "images", "shape": [2, 28, 28], "datatype": "UINT8", "data": images[:2].ravel().tolist()}
    answer = await client.post("/v2/models/mnist-conv/versions/1/infer", json={"inputs": [tensor]})
    assert answer.status_code == 200
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert set(outputs) == {"codes", "reconstruction", "distances", "cluster"}
    assert outputs["reconstruction"]["shape"] == [2, 28, 28] and len(outputs["reconstruction"]["data"]) == 2 * 784
    assert "id" not in answer.json()
    # the metadata declares each output's datatype as the answer gives it (the cluster index: INT32)
    metadata = (await client.get("/v2/models/mnist-conv/versions/1")).json()
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {k: o["datatype"] for k, o in outputs.items()}
    assert outputs["cluster"]["datatype"] == "INT32"
    codes = np.array(outputs["codes"]["data"], dtype=np.float32).reshape(2, -1)
    np.testing.assert_allclose(codes, await encode(client, images[:2] / 255.0, "mnist-conv"), atol=1e-5)


async def test_v2_health_and_metadata(client, committed_app):
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).status_code == 200
    server = (await client.get("/v2")).json()
    assert server["name"] == "aeserve" and server["extensions"] == ["binary_tensor_data"]
    for path in (f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/1/ready"):
        assert (await client.get(path)).json() == {"name": MODEL, "ready": True}
    metadata = (await client.get("/v2/models/mnist-conv")).json()
    assert metadata["platform"] == "tflite" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "codes": [-1, 196], "reconstruction": [-1, 28, 28], "distances": [-1, 10], "cluster": [-1]
    }
    assert (await client.get("/v2/models/mnist-conv/versions/1")).json() == metadata
    for path in ("/v2/models/resnet", "/v2/models/resnet/ready", f"/v2/models/{MODEL}/versions/2/ready"):
        answer = await client.get(path)
        assert answer.status_code == 404 and "error" in answer.json()


def _tensor(**changes) -> dict:
    return {"name": "images", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784} | changes


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": []}, 400),
        ({"inputs": [_tensor(), _tensor()]}, 400),
        ({"inputs": [{"name": "images", "data": [0.0] * 784}]}, 400),
        ({"inputs": [_tensor(datatype="BYTES")]}, 400),
        ({"inputs": [_tensor(datatype="INT64")]}, 400),
        ({"inputs": [_tensor(shape=[1, 783])]}, 400),
        ({"inputs": [_tensor(shape=[1, -784])]}, 400),
        ({"inputs": [_tensor(shape="1x784")]}, 400),
        ({"inputs": [_tensor(shape=[2, 392])]}, 422),
        ({"inputs": [_tensor(data=[2.0] * 784)]}, 422),
        ({"inputs": [_tensor(data=[None] * 784)]}, 422),
        ({"inputs": [_tensor(data=["x"] * 784)]}, 400),
        ({"inputs": [_tensor(data="0")]}, 400),
        ({"inputs": [_tensor(shape=[10**12, 784])]}, 413),
        ({"inputs": [_tensor()], "outputs": [{"name": "logits"}]}, 400),
        ({"inputs": [_tensor()], "outputs": "codes"}, 400),
        ({"inputs": [_tensor()], "id": 42}, 400),
        ([_tensor()], 400),
    ],
    ids=[
        "no-inputs", "two-inputs", "no-shape-or-datatype", "bytes", "int64", "size-mismatch", "negative-dim",
        "shape-not-a-list", "not-an-image-shape", "over-range", "nulls", "strings", "data-not-a-list", "huge-shape",
        "unknown-output", "outputs-not-a-list", "id-not-a-string", "not-an-object",
    ],
)
async def test_v2_errors(client, body, status):
    answer = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and answer.json()["error"]


async def test_v2_not_ready_before_models_load():
    import httpx

    from app.main import create_app

    app = create_app()  # no lifespan: nothing loads
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        ready = await http.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["error"]
        assert (await http.get("/v2/health/live")).status_code == 200


# The binary tensor data extension


def binary_request(head: dict, *tensors: bytes) -> dict:
    """httpx's arguments for a JSON head followed by binary tensors, as KServe's and Triton's clients send them."""
    data = json.dumps(head).encode()
    headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(data))}
    return {"content": data + b"".join(tensors), "headers": headers}


def binary_outputs(answer) -> dict[str, np.ndarray]:
    """The outputs of a binary answer: the JSON head's tensors, each read from its bytes or its data."""
    length = int(answer.headers["inference-header-content-length"])
    head, at, outputs = json.loads(answer.content[:length]), length, {}
    dtypes = {"FP32": "<f4", "INT32": "<i4"}
    for output in head["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            values = np.array(output["data"], dtype=dtypes[output["datatype"]])
        else:
            values, at = np.frombuffer(answer.content[at : at + size], dtypes[output["datatype"]]), at + size
        outputs[output["name"]] = values.reshape(output["shape"])
    assert at == len(answer.content)
    return outputs


async def test_v2_binary_input_answers_as_json_input(client, test_images):
    images = test_images.reshape(3, 28, 28).astype(np.float32)
    tensor = {"name": "images", "shape": [3, 28, 28], "datatype": "FP32"}
    as_json = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor | {"data": images.tolist()}]})
    head = {"id": "7", "inputs": [tensor | {"parameters": {"binary_data_size": images.nbytes}}]}
    as_binary = await client.post(f"/v2/models/{MODEL}/infer", **binary_request(head, images.tobytes()))
    assert as_binary.status_code == 200, as_binary.text
    assert as_binary.headers["content-type"] == "application/json" and as_binary.json()["id"] == "7"
    assert "inference-header-content-length" not in as_binary.headers  # no output asked for binary
    assert as_binary.json()["outputs"] == as_json.json()["outputs"]
    codes = np.array(as_binary.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, -1)
    np.testing.assert_array_equal(codes, await encode(client, images))


async def test_v2_binary_outputs_when_asked(client, mnist_test):
    images, _ = mnist_test
    batch = images[:2]  # uint8, as UINT8 bytes
    tensor = {"name": "images", "shape": [2, 784], "datatype": "UINT8", "parameters": {"binary_data_size": 1568}}
    every = {"inputs": [tensor], "parameters": {"binary_data_output": True}}
    answer = await client.post("/v2/models/mnist-conv/infer", **binary_request(every, batch.tobytes()))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream" and answer.headers["x-model"] == "mnist-conv"
    outputs = binary_outputs(answer)
    assert set(outputs) == {"codes", "reconstruction", "distances", "cluster"}
    assert outputs["cluster"].dtype == np.int32 and outputs["reconstruction"].shape == (2, 28, 28)
    np.testing.assert_array_equal(outputs["codes"], await encode(client, batch / 255.0, "mnist-conv"))
    # one output binary, one as JSON data (its own binary_data overrides binary_data_output)
    some = every | {"outputs": [{"name": "codes", "parameters": {"binary_data": False}}, {"name": "cluster"}]}
    mixed = await client.post("/v2/models/mnist-conv/infer", **binary_request(some, batch.tobytes()))
    head = json.loads(mixed.content[: int(mixed.headers["inference-header-content-length"])])
    assert [("data" in o, o.get("parameters")) for o in head["outputs"]] == [
        (False, {"binary_data_size": 8}),
        (True, None),
    ]
    mixed_outputs = binary_outputs(mixed)
    assert set(mixed_outputs) == {"codes", "cluster"}
    for name, values in mixed_outputs.items():
        np.testing.assert_array_equal(values, outputs[name])
