"""Start the service (or any ASGI app of this repository) on a free loopback port and wait until it is ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    target: str = "app.main:app",
    *uvicorn_args: str,
    env: dict[str, str] | None = None,
    log: IO | None = None,
    cwd: Path = ROOT,
) -> tuple[subprocess.Popen, str]:
    """Run ``uvicorn target`` (through ``app.serve``, as ``make serve`` does) in ``cwd``; return the process and
    its base URL. The gRPC service listens on a free port too, unless ``env`` names one in
    ``AESERVE_GRPC_PORT`` (0: none)."""
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    env = {"AESERVE_GRPC_PORT": str(grpc_port)} | (env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "app.serve", target, "--host", "127.0.0.1", "--port", str(port), *uvicorn_args],
        cwd=cwd,
        env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"} | (env or {}),
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


def start(
    target: str = "app.main:app",
    *uvicorn_args: str,
    env: dict[str, str] | None = None,
    log: IO | None = None,
    timeout: float = 120.0,
    wait_for: str = "/readyz",
    cwd: Path = ROOT,
) -> tuple[subprocess.Popen, str, float]:
    """:func:`launch`, then wait for ``GET /readyz`` (or ``wait_for``) to answer 200.

    Returns the process, its base URL and the seconds from start to ready.
    """
    started = time.perf_counter()
    process, base = launch(target, *uvicorn_args, env=env, log=log, cwd=cwd)
    while time.perf_counter() - started < timeout:
        try:
            if httpx.get(f"{base}{wait_for}", timeout=2).status_code == 200:
                return process, base, time.perf_counter() - started
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{target} exited with {process.returncode} before it was ready")
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"{target} not ready within {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, then wait; returns the exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)
