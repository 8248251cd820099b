"""Serving benchmark: the service beside the bare-server ceiling and the naive tutorial app.

Starts each server in turn on loopback (uvicorn, one worker, the same flags), drives it
with wrk (1 thread, 8 connections) for the same three loads, and prints one table:
requests/s, p50, p99, ratio to the ceiling and to the naive app; start-to-ready time and
RSS per worker. Run with ``make bench`` (installs Debian's wrk when missing).
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
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
    return {
        "JSON /encode, 1 image": Load(encode, "application/json", one, 1),
        "PNG upload /classify": Load(
            "/classify?model=mnist-pretrained-classifier", f"multipart/form-data; boundary={boundary}", multipart, 1
        ),
        "npy /encode, 1024 images": Load(encode, "application/x-npy", npy, 1024, NPY, (ceiling, ours)),
        BATCH_JSON: Load(encode, "application/json", batch_json, 1024, servers=(naive,)),
        "npy /encode, 1024 images, the default model": Load(
            "/encode", "application/x-npy", npy, 1024, NPY, (ours,)
        ),
    }


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
    script.write_text(LUA.format(content_type=load.content_type, accept=load.accept, body=load.body))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per load")
    parser.add_argument(
        "--warmup", type=int, default=5, help="unmeasured seconds before each load (a fresh worker starts slower)"
    )
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--only", choices=list(SERVERS), action="append", help="run only these servers")
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
        env = service_env if target == "app.main:app" else {}
        process, base, ready = local_server.start(
            target, "--workers", "1", "--no-access-log", "--log-level", "warning", env=env
        )
        try:
            for name, load in plan.items():
                if server not in load.servers:
                    continue
                if args.warmup:
                    wrk(base, load, args.warmup, args.connections, folder)
                results.setdefault(name, {})[server] = wrk(base, load, args.seconds, args.connections, folder)
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
