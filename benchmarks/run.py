"""Serving benchmark: the service beside the bare-server ceiling and the naive tutorial app.

Starts each server in turn on loopback (uvicorn, one worker, the same flags), drives it
with wrk (1 thread, 8 connections) for the same three loads, and prints one table:
requests/s, p50, p99, ratio to the ceiling and to the naive app; start-to-ready time and
RSS per worker. Run with ``make bench`` (installs Debian's wrk when missing).

The service's batch of 1024 images also goes through the Open Inference Protocol: V2 REST with
JSON tensors, V2 REST with the binary tensor data extension, and gRPC (8 concurrent calls on one
channel from a grpc.aio client in this process, since wrk speaks no HTTP/2), each asking for the
codes alone, as ``/encode`` answers them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import local_server

ROOT = Path(__file__).resolve().parent.parent
NPY = "application/x-npy"
BATCH_JSON = "JSON /encode, 1024 images (naive app's form)"
SERVERS = {
    "ceiling (bare FastAPI)": "benchmarks.bare_app:app",
    "naive (tutorial app)": "benchmarks.naive_app:app",
    "aeserve": "app.main:app",
}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
wrk.headers["Accept"] = "{accept}"
{headers}
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


@dataclass(frozen=True)
class Load:
    """One load: what every server is sent (the ceiling and the naive app ignore the query string)."""

    path: str
    content_type: str
    body: Path
    images: int
    accept: str = "application/json"
    servers: tuple[str, ...] = tuple(SERVERS)
    headers: tuple[tuple[str, str], ...] = ()
    grpc: bool = False  # path names the model; body is a serialised ModelInferRequest


def loads(folder: Path) -> dict[str, Load]:
    """The loads by name. Every server runs the same models: /encode with mnist-stacked, /classify
    with mnist-pretrained-classifier; one extra load shows the service's default /encode model."""
    digits = np.load(ROOT / "examples" / "digits.npy", allow_pickle=False)
    one = folder / "one.json"
    one.write_text(json.dumps({"images": [(digits[2] / 255.0).round(4).tolist()]}))
    png = io.BytesIO()
    Image.fromarray(digits[2]).save(png, format="PNG")
    boundary = "benchmarkboundary"
    multipart = folder / "one.multipart"
    multipart.write_bytes(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + png.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    batch = np.resize(digits, (1024, 28, 28))
    npy = folder / "batch.npy"
    np.save(npy, batch)
    batch_json = folder / "batch.json"  # the naive app takes JSON only
    batch_json.write_text(json.dumps({"images": (batch / 255.0).round(3).tolist()}))
    ceiling, naive, ours = SERVERS
    encode = "/encode?model=mnist-stacked"
    v2, v2_headers = protocol_bodies(folder, batch)
    return {
        "JSON /encode, 1 image": Load(encode, "application/json", one, 1),
        "PNG upload /classify": Load(
            "/classify?model=mnist-pretrained-classifier", f"multipart/form-data; boundary={boundary}", multipart, 1
        ),
        "npy /encode, 1024 images": Load(encode, "application/x-npy", npy, 1024, NPY, (ceiling, ours)),
        BATCH_JSON: Load(encode, "application/json", batch_json, 1024, servers=(naive,)),
        "npy /encode, 1024 images, the default model": Load("/encode", "application/x-npy", npy, 1024, NPY, (ours,)),
        "V2 JSON /infer, 1024 images": Load(V2_INFER, "application/json", v2["json"], 1024, servers=(ours,)),
        "V2 binary /infer, 1024 images": Load(
            V2_INFER, "application/octet-stream", v2["binary"], 1024, servers=(ours,), headers=v2_headers
        ),
        "gRPC ModelInfer, 1024 images": Load("mnist-stacked", "", v2["grpc"], 1024, servers=(ours,), grpc=True),
    }


V2_INFER = "/v2/models/mnist-stacked/infer"


def protocol_bodies(folder: Path, batch: np.ndarray) -> tuple[dict[str, Path], tuple[tuple[str, str], ...]]:
    """The batch as Open Inference Protocol requests for the codes: JSON tensors, JSON head and binary
    tensor, and a gRPC ModelInferRequest (uint8 pixels in each, as the .npy load sends them)."""
    from app.protocols.oip import grpc_predict_v2_pb2 as pb

    tensor = {"name": "images", "shape": list(batch.shape), "datatype": "UINT8"}
    outputs = [{"name": "codes"}]
    bodies = {"json": folder / "v2.json", "binary": folder / "v2.bin", "grpc": folder / "v2.grpc"}
    bodies["json"].write_text(json.dumps({"inputs": [tensor | {"data": batch.ravel().tolist()}], "outputs": outputs}))
    binary_tensor = tensor | {"parameters": {"binary_data_size": batch.nbytes}}
    binary_outputs = [{"name": "codes", "parameters": {"binary_data": True}}]
    head = json.dumps({"inputs": [binary_tensor], "outputs": binary_outputs}).encode()
    bodies["binary"].write_bytes(head + batch.tobytes())
    request = pb.ModelInferRequest(model_name="mnist-stacked", raw_input_contents=[batch.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=batch.shape)
    request.outputs.add(name="codes")
    bodies["grpc"].write_bytes(request.SerializeToString())
    return bodies, (("Inference-Header-Content-Length", str(len(head))),)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def to_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(base: str, load: Load, seconds: int, connections: int, folder: Path) -> dict:
    script = folder / f"{load.body.stem}-{abs(hash(load))}.lua"
    headers = "\n".join(f'wrk.headers["{key}"] = "{value}"' for key, value in load.headers)
    script.write_text(LUA.format(content_type=load.content_type, accept=load.accept, body=load.body, headers=headers))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            base + load.path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)) or {"50": "0us", "99": "0us"}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(percentiles["50"]),
        "p99": to_ms(percentiles["99"]),
        "errors": int(errors.group(1)) if errors else 0,
    }


def grpc_load(address: str, load: Load, seconds: int, connections: int) -> dict:
    """wrk's figures for gRPC: ``connections`` calls in flight on one channel for ``seconds``, the
    request's bytes sent as they are (no protobuf work in the client)."""
    import grpc

    body = load.body.read_bytes()

    async def drive() -> dict:
        latencies: list[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)]) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            deadline = time.perf_counter() + seconds

            async def client() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    try:
                        await call(body, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(connections)))
            elapsed = time.perf_counter() - started
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (0.0, 0.0)
        return {"rps": len(latencies) / elapsed, "p50": float(p50), "p99": float(p99), "errors": errors}

    return asyncio.run(drive())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per load")
    parser.add_argument(
        "--warmup", type=int, default=5, help="unmeasured seconds before each load (a fresh worker starts slower)"
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--only", choices=list(SERVERS), action="append", help="run only these servers")
    parser.add_argument("--load", action="append", metavar="NAME", help="run only these loads (the table's names)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the service, e.g. AESERVE_BATCHING=false",
    )
    args = parser.parse_args()
    service_env = dict(item.split("=", 1) for item in args.env)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (or run make bench)")
    folder = Path(tempfile.mkdtemp(prefix="aeserve-bench-"))
    plan = loads(folder)
    results: dict[str, dict[str, dict]] = {}
    startup: dict[str, tuple[float, float]] = {}
    for server, target in SERVERS.items():
        if args.only and server not in args.only:
            continue
        grpc_port = local_server.free_port()
        env = (service_env | {"AESERVE_GRPC_PORT": str(grpc_port)}) if target == "app.main:app" else {}
        process, base, ready = local_server.start(
            target, "--workers", "1", "--no-access-log", "--log-level", "warning", env=env
        )
        try:
            for name, load in plan.items():
                if server not in load.servers or (args.load and name not in args.load):
                    continue
                if load.grpc:
                    address = f"127.0.0.1:{grpc_port}"
                    measure = partial(grpc_load, address, load, connections=args.connections)
                else:
                    measure = partial(wrk, base, load, connections=args.connections, folder=folder)
                if args.warmup:
                    measure(seconds=args.warmup)
                results.setdefault(name, {})[server] = measure(seconds=args.seconds)
                print(f"{server:24} {name:46} {results[name][server]}", file=sys.stderr, flush=True)
            startup[server] = (ready, rss_mb(process.pid))
        finally:
            local_server.stop(process)
    print_table(results, startup, plan, args)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def print_table(results, startup, plan, args) -> None:
    ceiling, naive, ours = SERVERS
    settings = f"; service environment {' '.join(args.env)}" if args.env else ""
    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, one uvicorn worker each, loopback{settings}.\n")
    print("| load | server | requests/s | images/s | p50 ms | p99 ms | non-2xx | × ceiling | × naive |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, by_server in results.items():
        if name == BATCH_JSON:
            continue
        rows = dict(by_server)
        if name == "npy /encode, 1024 images" and naive in results.get(BATCH_JSON, {}):
            rows[naive] = results[BATCH_JSON][naive]
        per_request = plan[name].images
        for server in (ceiling, naive, ours):
            if server not in rows:
                continue
            r = rows[server]
            vs_ceiling = ratio(r["rps"], rows[ceiling]["rps"]) if ceiling in rows else float("nan")
            vs_naive = ratio(r["rps"], rows[naive]["rps"]) if naive in rows else float("nan")
            label = server + (" (JSON body)" if server == naive and per_request > 1 else "")
            print(
                f"| {name} | {label} | {r['rps']:,.0f} | {r['rps'] * per_request:,.0f} | {r['p50']:.2f} | "
                f"{r['p99']:.2f} | {r['errors']} | {vs_ceiling:.2f} | {vs_naive:,.1f} |"
            )
    print("\n| server | start to ready s | RSS MB (after the loads) |\n|---|---:|---:|")
    for server, (ready, rss) in startup.items():
        print(f"| {server} | {ready:.1f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
