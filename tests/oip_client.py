"""One Open Inference Protocol client against a running server, with the client's default settings.

tests/test_oip_clients.py runs this in a subprocess per client: tritonclient.grpc and kserve register
the same protobuf names (``inference.*``) in protobuf's process-wide pool, so the two cannot be imported
into one process (nor beside the server's own stubs).

    python tests/oip_client.py KIND ADDRESS IMAGES.npy OUTDIR MODEL [MODEL ...] [--key KEY]

KIND is triton-http, triton-grpc, kserve-rest or kserve-grpc; ADDRESS is host:port of the HTTP or the
gRPC service, as KIND needs. Each model is asked for every output of a float32 batch; the outputs go to
OUTDIR/<model>.npz, and one JSON line per model (name, version, the output datatypes) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np


def triton(kind: str, address: str, images: np.ndarray, model: str, key: str | None) -> tuple[dict, dict]:
    if kind == "triton-http":
        import tritonclient.http as client
    else:
        import tritonclient.grpc as client
    headers = {"authorization": f"Bearer {key}"} if key else None
    server = client.InferenceServerClient(address)
    assert server.is_server_live() and server.is_model_ready(model, headers=headers)
    tensor = client.InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)  # binary_data=True over HTTP; raw_input_contents over gRPC
    result = server.infer(model, [tensor], headers=headers)  # no outputs named: all of them, binary over HTTP
    response = result.get_response()
    if kind == "triton-http":
        name, version, described = response["model_name"], response["model_version"], response["outputs"]
        types = {o["name"]: o["datatype"] for o in described}
        binary = all("binary_data_size" in o.get("parameters", {}) for o in described)
    else:
        name, version = response.model_name, response.model_version
        types = {o.name: o.datatype for o in response.outputs}
        binary = len(response.raw_output_contents) == len(response.outputs)
    arrays = {output: result.as_numpy(output) for output in types}
    return arrays, {"model": name, "version": version, "datatypes": types, "binary_outputs": binary}


async def kserve(kind: str, address: str, images: np.ndarray, model: str, key: str | None) -> tuple[dict, dict]:
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    tensor = InferInput("images", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)  # binary_data=True
    request = InferRequest(model_name=model, infer_inputs=[tensor])
    if kind == "kserve-rest":
        client = InferenceRESTClient(RESTConfig(protocol="v2"))  # its default is V1, TF Serving's protocol
        headers = {"authorization": f"Bearer {key}"} if key else None
        response = await client.infer(f"http://{address}", request, model_name=model, headers=headers)
        await client.close()
    else:
        client = InferenceGRPCClient(address)
        metadata = (("authorization", f"Bearer {key}"),) if key else None
        response = await client.infer(request, headers=metadata)
        await client.close()
    arrays = {output.name: output.as_numpy() for output in response.outputs}
    types = {output.name: output.datatype for output in response.outputs}
    return arrays, {"model": response.model_name, "version": response.model_version, "datatypes": types}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["triton-http", "triton-grpc", "kserve-rest", "kserve-grpc"])
    parser.add_argument("address")
    parser.add_argument("images", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--key")
    args = parser.parse_args()
    images = np.load(args.images, allow_pickle=False)
    for model in args.models:
        if args.kind.startswith("triton"):
            arrays, described = triton(args.kind, args.address, images, model, args.key)
        else:
            arrays, described = asyncio.run(kserve(args.kind, args.address, images, model, args.key))
        np.savez(args.outdir / f"{model}.npz", **arrays)
        print(json.dumps(described), flush=True)


if __name__ == "__main__":
    main()
