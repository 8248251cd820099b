"""Threads or processes for decoding uploads: health-check latency and decode throughput, measured.

For each pool (``AESERVE_DECODE_POOL=thread`` and ``process``, ``AESERVE_DECODE_WORKERS`` workers) a
real server on loopback gets, one phase after the other:

- **flood**: ``--clients`` clients each posting one costly image file after another for
  ``--seconds`` (a blank 4000x4000 16-bit PNG: some 30 KB that inflate to 32 MB, about half a second
  of CPU to decode), while ``GET /healthz`` is sent every 50 ms. Reports the health checks' p50, p99
  and worst latency and the costly images decoded per second (and the 503s of requests that found
  every decoder busy past the deadline).
- **small**: the same clients posting a 28x28 PNG to ``/classify`` for ``--seconds``: the ordinary
  upload's requests/s and p50/p99 (what the hand-off to the pool costs each request).

The pools alternate, ``--rounds`` times each, so that the machine's drift touches both alike.

    .venv/bin/python benchmarks/decode_pool.py                 # 2 rounds, 8 s per phase
    .venv/bin/python benchmarks/decode_pool.py --rounds 1 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import local_server

POOLS = ("thread", "process")


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


COSTLY = png(np.zeros((4000, 4000), np.uint16))
SMALL = png((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def poster(http: httpx.AsyncClient, path: str, data: bytes, until: float, out: dict[int, list[float]]) -> None:
    """Post ``data`` as one multipart file, again and again, until ``until``; latencies by status."""
    while time.perf_counter() < until:
        started = time.perf_counter()
        response = await http.post(path, files={"file": ("f.png", data, "image/png")})
        out.setdefault(response.status_code, []).append(time.perf_counter() - started)


async def prober(http: httpx.AsyncClient, until: float, out: list[float]) -> None:
    while time.perf_counter() < until:
        started = time.perf_counter()
        response = await http.get("/healthz")
        assert response.status_code == 200, response.text
        out.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)


async def phase(base: str, data: bytes, path: str, clients: int, seconds: float, probe: bool) -> tuple[dict, list]:
    limits = httpx.Limits(max_connections=clients + 1)
    statuses: dict[int, list[float]] = {}
    health: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        await http.post(path, files={"file": ("f.png", SMALL, "image/png")})  # the pool's workers started
        until = time.perf_counter() + seconds
        tasks = [poster(http, path, data, until, statuses) for _ in range(clients)]
        if probe:
            tasks.append(prober(http, until, health))
        await asyncio.gather(*tasks)
    return statuses, health


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each pool, alternating")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in each phase")
    parser.add_argument("--workers", type=int, default=2, help="AESERVE_DECODE_WORKERS")
    args = parser.parse_args(argv)

    rows = {pool: {"health": [], "costly": 0, "busy": 0, "small": [], "small_s": 0.0} for pool in POOLS}
    with tempfile.TemporaryDirectory(prefix="aeserve-decode-pool-") as folder:
        for round_ in range(args.rounds):
            for pool in POOLS if round_ % 2 == 0 else POOLS[::-1]:
                env = {"AESERVE_DECODE_POOL": pool, "AESERVE_DECODE_WORKERS": str(args.workers)}
                with (Path(folder) / f"{pool}-{round_}.log").open("w") as log:
                    process, base, _ = local_server.start("app.main:app", env=env, log=log)
                    try:
                        costly, health = asyncio.run(
                            phase(base, COSTLY, "/encode", args.clients, args.seconds, probe=True)
                        )
                        small, _ = asyncio.run(phase(base, SMALL, "/classify", args.clients, args.seconds, False))
                    finally:
                        local_server.stop(process)
                row = rows[pool]
                row["health"] += health
                row["costly"] += len(costly.get(200, []))
                row["busy"] += len(costly.get(503, []))
                row["small"] += small.get(200, [])
                unexpected = {k: len(v) for k, v in (costly | small).items() if k not in (200, 503)}
                if unexpected:
                    print(f"{pool}: unexpected statuses {unexpected}", file=sys.stderr)
                    return 1
                print(f"round {round_ + 1}, {pool}: done", file=sys.stderr)

    total = args.rounds * args.seconds
    print(
        f"{args.clients} clients, {args.workers} workers, {args.rounds} round(s) of {args.seconds:g} s per phase "
        "and pool, alternating\n"
    )
    print(
        "| pool | /healthz p50 ms | p99 ms | worst ms | costly images/s | 503 busy | small uploads req/s "
        "| small p50 ms | small p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pool, row in rows.items():
        health, small = row["health"], row["small"]
        print(
            f"| {pool} | {percentile(health, 50) * 1000:.1f} | {percentile(health, 99) * 1000:.1f} | "
            f"{max(health, default=float('nan')) * 1000:.1f} | {row['costly'] / total:.2f} | {row['busy']} | "
            f"{len(small) / total:.0f} | {statistics.median(small) * 1000:.1f} | "
            f"{percentile(small, 99) * 1000:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
