"""Costly uploads against a real uvicorn: the health checks answer while image files decode, because decoding
runs off the event loop, and each request's decoding stops at its budget.

The server's budgets are widened here (a JPEG's scans, a request's pixels) so that the costly files are
decoded, not refused from their headers as the default settings refuse them (tests/test_hostile_inputs.py):
what is held is that the decoding, seconds of CPU, never holds the event loop. The bound on a health
check's answer is generous (machines are noisy); benchmarks/decode_pool.py measures the latency.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from helpers import blank_png16, many_scans_jpeg, multipart

from scripts import local_server

# A health check must answer within this while the costly requests run (each takes seconds of CPU).
HEALTH_BOUND_S = 1.5
BUDGETS = {
    "AESERVE_MAX_IMAGE_SCANS": "100000",
    "AESERVE_MAX_REQUEST_PIXELS": "1000000000",
    "AESERVE_DECODE_CPU_MS": "1000",
    "AESERVE_DECODE_WORKERS": "3",  # the three costly requests decode at once
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("costly") / "uvicorn.log"
    with log_path.open("w") as log:
        process, base, _ = local_server.start("app.main:app", env=BUDGETS, log=log)
        try:
            yield base
        finally:
            local_server.stop(process)


def costly_requests() -> list[tuple[str, dict]]:
    """A 125 KB JPEG of 3,000 scans (seconds to decode), and sixteen blank 4000x4000 16-bit PNGs in one
    multipart body and as TF Serving b64 instances (well over the CPU budget in all)."""
    jpeg, pngs = many_scans_jpeg(), [blank_png16()] * 16
    b64 = {"instances": [{"b64": base64.b64encode(png).decode()} for png in pngs]}
    return [
        ("/encode", multipart(jpeg, kind="image/jpeg")),
        ("/classify", multipart(*pngs)),
        ("/v1/models/mnist-conv:predict", {"json": b64}),
    ]


def test_health_checks_answer_while_costly_images_decode(server):
    with ThreadPoolExecutor(4) as pool, httpx.Client(base_url=server, timeout=30) as http:
        attacks = [
            pool.submit(httpx.post, f"{server}{path}", timeout=60, **request) for path, request in costly_requests()
        ]
        time.sleep(0.3)  # the bodies are sent and their decoding has begun
        slowest, probes = 0.0, 0
        while not all(attack.done() for attack in attacks):
            for path in ("/healthz", "/readyz"):
                started = time.perf_counter()
                assert http.get(path).status_code == 200
                slowest, probes = max(slowest, time.perf_counter() - started), probes + 1
            time.sleep(0.05)
        answers = [attack.result() for attack in attacks]
    assert probes >= 2, "the costly requests ended before any health check was sent"
    assert slowest < HEALTH_BOUND_S, f"a health check took {slowest:.2f} s while images decoded"
    for answer in answers:  # each request stopped at its CPU budget, with a message naming it
        assert answer.status_code == 413, answer.text
        assert "AESERVE_DECODE_CPU_MS" in answer.json()["error"]


def test_the_server_serves_after_the_costly_requests(server):
    with httpx.Client(base_url=server, timeout=30) as http:
        response = http.post("/classify", **multipart(blank_png16(28)))
        assert response.status_code == 200, response.text
