"""Limits at the edge, against a real uvicorn (``python -m app.serve``, as ``make serve`` and the image run it):
head size, head and body timeouts, answers nobody reads, the connection limit, request bodies held in
flight, content codings, short echoes in errors, plain-text log lines a client cannot forge, HEAD on the
health checks, and uvicorn's own lines as JSON from every process. The timeouts are set low here (1 s).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import MODELS_DIR, ready_app
from helpers import npy_bytes

from scripts import local_server

MODEL = "fashion-mnist-tied"
TIMEOUT_S = 1.0
MAX_CONNECTIONS = 24
IN_FLIGHT = 2**20
EDGE_ENV = {
    "AESERVE_HEAD_TIMEOUT_S": str(TIMEOUT_S),
    "AESERVE_BODY_TIMEOUT_S": str(TIMEOUT_S),
    "AESERVE_SEND_TIMEOUT_S": str(TIMEOUT_S),
    "AESERVE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "AESERVE_MAX_BODY_BYTES_IN_FLIGHT": str(IN_FLIGHT),
    "AESERVE_LOG_FORMAT": "text",
    "AESERVE_ACCESS_LOG": "all",
}


@pytest.fixture(scope="module")
def small_models(tmp_path_factory) -> Path:
    """A models directory holding one small committed model."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copytree(MODELS_DIR / MODEL, folder / MODEL)
    return folder


@pytest.fixture(scope="module")
def server(small_models, tmp_path_factory):
    """One uvicorn process with low timeouts; yields (host, port, log path)."""
    log_path = tmp_path_factory.mktemp("edge") / "server.log"
    with log_path.open("w") as log:
        env = EDGE_ENV | {"AESERVE_MODELS_DIR": str(small_models)}
        process, base, _ = local_server.start("app.main:app", env=env, log=log)
        host, port = base.removeprefix("http://").split(":")
        try:
            yield host, int(port), log_path
        finally:
            local_server.stop(process)


def connect(server, timeout: float = 10.0, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(server[:2])
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (or resets it); a socket timeout fails the test."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def head(method: str, path: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(server, data: bytes) -> bytes:
    """Send ``data`` (one request, ``Connection: close``) and read the whole answer."""
    with connect(server) as sock:
        sock.sendall(data)
        return read_all(sock)


def encode_request(images: int = 2, *headers: str) -> bytes:
    body = npy_bytes(np.zeros((images, 28, 28), np.uint8))
    start = head(
        "POST",
        "/encode?dataset=fashion-mnist",
        "Content-Type: application/x-npy",
        "Connection: close",
        *headers,
        length=len(body),
    )
    return start + body


def test_a_head_over_the_limit_gets_431_and_one_under_it_is_served(server):
    under = exchange(server, head("GET", "/healthz", "X-Pad: " + "a" * 60_000, "Connection: close"))
    assert status_of(under) == 200, under[:200]
    started = time.perf_counter()
    over = exchange(server, head("GET", "/healthz", "X-Pad: " + "a" * 70_000, "Connection: close"))
    assert status_of(over) == 431, over[:200]
    assert json.loads(over.split(b"\r\n\r\n", 1)[1])["error"]
    # 4 MiB of one header: refused once the limit is passed, not after the parser has copied it all
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Pad: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(64):
                sock.sendall(b"b" * 65536)
        assert status_of(read_all(sock)) in (431, 0)
    assert time.perf_counter() - started < 5
    # the URL counts too
    assert status_of(exchange(server, head("GET", "/healthz?" + "q" * 70_000, "Connection: close"))) == 431


def test_no_error_echoes_more_than_a_short_prefix_of_what_the_client_sent(server):
    accept = "x/y," * 10_000  # 40,000 characters, under the head limit
    answers = [
        exchange(server, encode_request(1, "Accept: " + accept)),
        exchange(
            server,
            head(
                "POST", "/encode?dataset=fashion-mnist", "Content-Type: " + "t/" * 20_000, "Connection: close", length=0
            ),
        ),
        exchange(server, head("GET", "/models/" + "m" * 30_000, "Connection: close")),
        exchange(server, head("POST", "/encode?model=" + "n" * 30_000, "Connection: close", length=0)),
    ]
    assert [status_of(a) for a in answers] == [406, 415, 404, 404], [a[:80] for a in answers]
    for answer in answers:
        body = answer.split(b"\r\n\r\n", 1)[1]
        assert len(body) < 600, body[:200]
        assert json.loads(body)["error"]


def test_an_idle_connection_and_a_half_sent_head_are_closed_after_the_head_timeout(server):
    with connect(server) as idle, connect(server) as half:
        half.sendall(b"POST /encode HTTP/1.1\r\nHost: test\r\nContent-Ty")
        started = time.perf_counter()
        assert read_all(idle) == b""  # nothing was asked: closed without an answer
        assert status_of(read_all(half)) == 408
        assert time.perf_counter() - started < 5 * TIMEOUT_S
    # the head timer runs from the previous request's end: a kept-alive connection answers its next request
    with connect(server) as sock:
        sock.sendall(head("GET", "/healthz"))
        time.sleep(TIMEOUT_S / 2)
        assert status_of(sock.recv(65536)) == 200
        sock.sendall(head("GET", "/healthz", "Connection: close"))
        assert status_of(read_all(sock)) == 200


def test_a_stalled_body_closes_the_connection_with_408(server):
    request = encode_request(4)
    with connect(server) as sock:
        sock.sendall(request[: len(request) - 100])
        started = time.perf_counter()
        answer = read_all(sock)
        assert status_of(answer) == 408, answer[:200]
        assert TIMEOUT_S * 0.9 < time.perf_counter() - started < 5 * TIMEOUT_S
    # a body that trickles, each piece within the timeout, is read to its end
    with connect(server) as sock:
        cut = len(request) - 100
        sock.sendall(request[:cut])
        for at in range(cut, len(request), 50):
            time.sleep(TIMEOUT_S * 0.6)
            sock.sendall(request[at : at + 50])
        assert status_of(read_all(sock)) == 200


def test_an_answer_the_client_does_not_read_is_dropped_after_the_send_timeout(server):
    images = np.zeros((1024, 28, 28), np.uint8)  # a JSON answer of 1024 reconstructed images: about 8 MB
    body = npy_bytes(images)
    start = head(
        "POST",
        "/reconstruct?dataset=fashion-mnist",
        "Content-Type: application/x-npy",
        "Connection: close",
        length=len(body),
    )
    with connect(server, timeout=30, rcvbuf=4096) as sock:
        sock.sendall(start + body)
        time.sleep(4 * TIMEOUT_S)
        answer = read_all(sock)
    assert status_of(answer) == 200
    head_part, _, received = answer.partition(b"\r\n\r\n")
    length = int(next(line for line in head_part.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    assert length > 4_000_000 and len(received) < length


def test_connections_beyond_the_limit_get_503_with_retry_after_and_probes_are_still_answered(server):
    idle = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)
        refused = exchange(server, encode_request(1))
        assert status_of(refused) == 503, refused[:200]
        assert b"\r\nretry-after: 1\r\n" in refused.lower()
        assert json.loads(refused.split(b"\r\n\r\n", 1)[1])["error"]
        assert status_of(exchange(server, head("GET", "/healthz", "Connection: close"))) == 200
        assert status_of(exchange(server, head("GET", "/readyz", "Connection: close"))) == 200
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert status_of(exchange(server, encode_request(1))) == 200


def test_request_bodies_held_beyond_the_budget_get_503_with_retry_after(server):
    big = encode_request(1100)  # ~860 KB of the 1 MiB budget, held while its last bytes stall
    with connect(server) as holder:
        holder.sendall(big[:-10])
        time.sleep(0.3)
        refused = exchange(server, encode_request(400))  # ~310 KB more: beyond the budget
        assert status_of(refused) == 503, refused[:200]
        assert b"\r\nretry-after: 1\r\n" in refused.lower()
        assert status_of(exchange(server, encode_request(2))) == 200  # a small one fits beside it
        holder.sendall(big[-10:])
        assert status_of(read_all(holder)) == 413  # 1100 images: over the batch limit, once read
    assert status_of(exchange(server, encode_request(400))) == 200  # the budget is free again


def test_a_streamed_body_that_passes_the_budget_gets_503_as_it_arrives(server):
    body = npy_bytes(np.zeros((1400, 28, 28), np.uint8))  # ~1.1 MB, chunked: no Content-Length to judge it by
    start = head(
        "POST",
        "/encode?dataset=fashion-mnist",
        "Content-Type: application/x-npy",
        "Transfer-Encoding: chunked",
        "Connection: close",
    )
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(piece), piece) for piece in np.array_split(np.frombuffer(body, np.uint8), 64)
    )
    with connect(server) as sock:
        sock.sendall(start)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(chunks + b"0\r\n\r\n")
        answer = read_all(sock)
    assert status_of(answer) == 503, answer[:200]
    assert b"\r\nretry-after: 1\r\n" in answer.lower()
    assert status_of(exchange(server, encode_request(400))) == 200  # what it held is free again


def test_a_content_coding_other_than_identity_gets_415(server):
    for coding in ("gzip", "deflate, identity", "br"):
        answer = exchange(server, encode_request(1, f"Content-Encoding: {coding}"))
        assert status_of(answer) == 415, (coding, answer[:200])
        assert b"\r\naccept-encoding: identity\r\n" in answer.lower()
    assert status_of(exchange(server, encode_request(1, "Content-Encoding: identity"))) == 200


def test_head_on_the_health_checks_answers_200_without_a_body(server):
    for path in ("/healthz", "/readyz"):
        with httpx.Client(base_url=f"http://{server[0]}:{server[1]}") as http:
            answer = http.head(path)
            assert answer.status_code == 200 and answer.content == b"", path


def test_a_newline_in_the_path_cannot_forge_a_plain_text_log_line(server):
    forged = "2026-01-01 00:00:00,000 INFO aeserve.access FORGED"
    path = "/nothing%0A" + forged.replace(" ", "%20") + "%0D%0Aalso"
    assert status_of(exchange(server, head("GET", path, "Connection: close"))) == 404
    time.sleep(0.2)
    lines = server[2].read_text().splitlines()
    assert any("FORGED" in line for line in lines)
    assert all("/nothing\\n2026-01-01" in line for line in lines if "FORGED" in line and "aeserve.access" in line)
    assert not [line for line in lines if line.startswith(("2026-01-01", "also"))]


@pytest.mark.anyio
async def test_the_bearer_scheme_is_case_insensitive(small_models):
    app = ready_app(models_dir=small_models, api_key="k3y")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        for given in ("Bearer k3y", "bearer k3y", "BEARER  k3y"):
            assert (await http.get("/models", headers={"Authorization": given})).status_code == 200, given
        for given in ("bearer k3", "Basic k3y", "bearerk3y", "k3y"):
            assert (await http.get("/models", headers={"Authorization": given})).status_code == 401, given


def test_every_process_writes_json_lines_with_several_workers(small_models, tmp_path):
    log_path = tmp_path / "workers.log"
    env = {"AESERVE_MODELS_DIR": str(small_models), "AESERVE_WARMUP": "false"}
    with log_path.open("w") as log:
        process, _, _ = local_server.start("app.main:app", "--workers", "2", env=env, log=log)
        assert local_server.stop(process) == 0
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    messages = [json.loads(line)["message"] for line in lines]  # every line a JSON object
    assert any(m.startswith("Started parent process") for m in messages), messages
    assert sum(m.startswith("Started server process") for m in messages) == 2, messages
