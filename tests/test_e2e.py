"""The service as users run it: a real uvicorn process on loopback, one and two workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT
from helpers import multipart, photo_of_digit

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(log, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {process.returncode}")
        time.sleep(0.25)
    process.kill()
    raise TimeoutError("service not ready within 120 s")


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


@pytest.mark.parametrize("workers", [1, 2])
def test_real_server(workers, tmp_path):
    log_path = tmp_path / "uvicorn.log"
    log = log_path.open("w")
    process, base = serve(log, "--workers", str(workers))
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            for _ in range(2 * workers):
                answer = http.post("/classify", **multipart(photo_of_digit(7)))
                assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == 7
            assert http.post("/encode", content=b"{", headers={"content-type": "application/json"}).status_code == 400
            docs = http.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            assert http.get("/openapi.json").json()["info"]["title"] == "aeserve"
    finally:
        code = stop(process)
        log.close()
    # uvicorn shuts down gracefully, then re-raises SIGTERM in a single-process server
    assert code in (0, -signal.SIGTERM)
    text = log_path.read_text()
    assert "Application shutdown complete" in text, (log_path, len(text))
