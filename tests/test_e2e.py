"""The service as users run it: a real uvicorn process on loopback, one and two workers."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from helpers import multipart, photo_of_digit

from scripts import local_server

pytestmark = pytest.mark.slow


def post_honouring_retry_after(http: httpx.Client, path: str, **kwargs) -> httpx.Response:
    """POST as a client should: each worker loads its models on its own, and one still loading
    answers 503 with Retry-After even after another has answered /readyz."""
    deadline = time.monotonic() + 60
    while True:
        response = http.post(path, **kwargs)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers["retry-after"]))


@pytest.mark.parametrize("workers", [1, 2])
def test_real_server(workers, tmp_path):
    log_path = tmp_path / "uvicorn.log"
    log = log_path.open("w")
    process, base, _ = local_server.start("app.main:app", "--workers", str(workers), log=log)
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(2 * workers):
                answer = post_honouring_retry_after(http, "/classify", **multipart(photo_of_digit(7)))
                assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == 7
            assert http.post("/encode", content=b"{", headers={"content-type": "application/json"}).status_code == 400
            docs = http.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            assert http.get("/openapi.json").json()["info"]["title"] == "aeserve"
    finally:
        code = local_server.stop(process)
        log.close()
    # uvicorn shuts down gracefully, then re-raises SIGTERM in a single-process server
    assert code in (0, -signal.SIGTERM)
    text = log_path.read_text()
    assert "Application shutdown complete" in text, (log_path, len(text))
