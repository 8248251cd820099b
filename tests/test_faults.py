"""Faults: a model changed after its manifest was written, and SIGTERM while requests are in flight.

(a) Every file a model's manifest lists carries its sha256 there; a copy of a committed model with
one of those files changed (a byte flipped, cut short, deleted, or the recorded digest edited) is
refused at load, and ``GET /readyz``, ``GET /models`` and ``GET /models/{name}`` say which model and
which file. (b) A real uvicorn process (scripts/local_server.py, the way the tests and ``make serve``
start it) that gets SIGTERM while requests are in flight stops accepting connections, answers every
request in flight with 200, and exits within ``UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN``, which uvicorn reads
from the environment.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import MODELS_DIR, ready_app
from helpers import npy_bytes

from scripts import local_server

SMALL = "fashion-mnist-pretrained-classifier"  # the smallest committed model
CONV = "mnist-conv"  # the slowest per image: its batches of 1024 keep requests in flight


def copy_model(name: str, models_dir: Path) -> Path:
    """A copy of committed model ``name`` under ``models_dir``; returns its version folder."""
    shutil.copytree(MODELS_DIR / name, models_dir / name)
    return models_dir / name / "1"


def flip_byte(path: Path, at: float = 0.5) -> None:
    """Change one byte of ``path`` (same length, so only a digest can tell)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def edit_recorded_digest(version: Path, rel: str) -> None:
    manifest_path = version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][rel] = hashlib.sha256(b"something else").hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=1))


# (id, model, file the manifest lists, how it changes, words the reason must hold)
CHANGES: list[tuple[str, str, str, Callable[[Path, str], None], str]] = [
    ("saved-model-byte-flipped", SMALL, "saved_model.pb", lambda v, rel: flip_byte(v / rel), "sha256"),
    ("variables-index-byte-flipped", SMALL, "variables/variables.index", lambda v, rel: flip_byte(v / rel), "sha256"),
    (
        "variables-data-last-byte-flipped",
        SMALL,
        "variables/variables.data-00000-of-00001",
        lambda v, rel: flip_byte(v / rel, at=0.9999),
        "sha256",
    ),
    ("cluster-centres-cut-short", "mnist-kmeans", "clusters.npz", lambda v, rel: cut_short(v / rel), "sha256"),
    (
        "error-quantiles-edited",
        "fashion-mnist-tied",
        "reconstruction_errors.json",
        lambda v, rel: (v / rel).write_text((v / rel).read_text().replace("0", "1", 1)),
        "sha256",
    ),
    ("fingerprint-deleted", SMALL, "fingerprint.pb", lambda v, rel: (v / rel).unlink(), "missing"),
    ("litert-model-byte-flipped", SMALL, "model.tflite", lambda v, rel: flip_byte(v / rel), "sha256"),
    ("litert-model-deleted", "mnist-umap-gmm", "model.tflite", lambda v, rel: (v / rel).unlink(), "missing"),
    ("recorded-digest-edited", SMALL, "saved_model.pb", edit_recorded_digest, "sha256"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "rel", "change", "words"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
async def test_a_changed_model_file_is_detected_and_reported(tmp_path, model, rel, change, words):
    version = copy_model(model, tmp_path)
    assert rel in json.loads((version / "manifest.json").read_text())["files"]
    change(version, rel)
    app = ready_app(models_dir=tmp_path)
    state = app.state.registry.states[(model, 1)]
    assert state.status == "failed" and rel in state.reason and words in state.reason, state.reason
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["error"]
        assert f"{model}/1" in reason and rel in reason and words in reason, reason
        assert str(tmp_path) not in reason  # no server path in an answer
        listed = {m["name"]: m for m in (await http.get("/models")).json()["models"]}
        assert listed[model]["status"] == "failed" and rel in listed[model]["reason"]
        one = (await http.get(f"/models/{model}")).json()
        assert one["status"] == "failed" and rel in one["reason"] and words in one["reason"]
        named = await http.post(
            "/classify" if model == SMALL else "/encode",
            params={"model": model},
            content=npy_bytes(np.zeros((1, 28, 28), np.uint8)),
            headers={"content-type": "application/x-npy"},
        )
        assert named.status_code == 503 and rel in named.json()["error"]


def test_a_model_without_its_litert_form_says_how_to_make_it(tmp_path):
    """A model exported before model.tflite existed: LiteRT refuses it by name, TensorFlow still serves it."""
    version = copy_model(SMALL, tmp_path)
    manifest = json.loads((version / "manifest.json").read_text())
    del manifest["litert"], manifest["files"]["model.tflite"]
    (version / "model.tflite").unlink()
    (version / "manifest.json").write_text(json.dumps(manifest))
    state = ready_app(models_dir=tmp_path).state.registry.states[(SMALL, 1)]
    assert state.status == "failed" and "python -m training convert" in state.reason, state.reason
    assert ready_app(models_dir=tmp_path, runtime="tensorflow").state.registry.ready


def test_the_untouched_copy_loads(tmp_path):
    """The control of the test above: copying alone changes nothing."""
    copy_model(SMALL, tmp_path)
    app = ready_app(models_dir=tmp_path)
    assert app.state.registry.ready, app.state.registry.not_ready_reason()


def test_a_file_added_after_the_manifest_is_reported(tmp_path):
    version = copy_model(SMALL, tmp_path)
    (version / "variables" / "variables.data-00001-of-00002").write_bytes(b"added after the manifest")
    app = ready_app(models_dir=tmp_path)
    state = app.state.registry.states[(SMALL, 1)]
    assert state.status == "failed" and "variables.data-00001-of-00002" in (state.reason or "")


# ---------------------------------------------------------------- SIGTERM against a real process


@contextmanager
def serving(models: list[str], tmp_path: Path, grace_seconds: int) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    """uvicorn over copies of ``models``, its graceful-shutdown time from UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN."""
    models_dir = tmp_path / "models"
    for name in models:
        copy_model(name, models_dir)
    log_path = tmp_path / "uvicorn.log"
    env = {
        "AESERVE_MODELS_DIR": str(models_dir),
        "AESERVE_LOG_FORMAT": "text",
        "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": str(grace_seconds),
        # what is held here is the draining of queued requests, however slow the machine: not the deadline
        "AESERVE_QUEUE_DEADLINE_MS": "600000",
    }
    with log_path.open("w") as log:
        process, base, _ = local_server.start("app.main:app", env=env, log=log)
        try:
            yield process, int(base.rsplit(":", 1)[1]), log_path
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


class HeldRequest:
    """A POST over a raw socket with ``Expect: 100-continue``: once the server answers ``100 Continue``
    the request is in the app (it asked for the body), and the body can be sent now or later."""

    def __init__(self, port: int, path: str, body: bytes, headers: dict[str, str]):
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.stream = self.sock.makefile("rb")
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", "Expect: 100-continue"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        status, _ = self._read_head()
        assert status == 100, f"expected 100 Continue, got {status}"

    def _read_head(self) -> tuple[int, dict[str, str]]:
        status_line = self.stream.readline().decode("latin-1")
        assert status_line.startswith("HTTP/1.1 "), repr(status_line)
        headers = {}
        while (line := self.stream.readline().decode("latin-1").strip()) != "":
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def send_body(self) -> None:
        self.sock.sendall(self.body)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The final response: status, headers, body (read by Content-Length)."""
        status, headers = self._read_head()
        body = self.stream.read(int(headers["content-length"]))
        self.stream.close()
        self.sock.close()
        return status, headers, body


def refused(port: int) -> bool:
    """Whether a new TCP connection to ``port`` is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_until_refused(port: int, attempts: int = 400) -> bool:
    for _ in range(attempts):
        if refused(port):
            return True
        time.sleep(0.025)
    return False


RECONSTRUCT = f"/reconstruct?model={CONV}"
NPY_IN_AND_OUT = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits(tmp_path):
    batch = npy_bytes(np.random.default_rng(0).integers(0, 256, (1024, 28, 28), dtype=np.uint8))
    grace = 60
    with serving([CONV], tmp_path, grace) as (process, port, log_path):
        # In the app when SIGTERM comes: 1024 images each, sent just before it (with the model, or
        # answered already on a fast machine), half sent, or not sent at all yet.
        requests = [HeldRequest(port, RECONSTRUCT, batch, NPY_IN_AND_OUT) for _ in range(9)]
        computing, half_sent, uploading = requests[:3], requests[3:6], requests[6:]
        for request in half_sent:
            request.sock.sendall(batch[: len(batch) // 2])
            request.body = batch[len(batch) // 2 :]
        for request in computing:
            request.send_body()

        process.send_signal(signal.SIGTERM)
        assert wait_until_refused(port), "new connections were still accepted after SIGTERM"
        assert process.poll() is None, "the server exited with requests in flight"
        for request in half_sent + uploading:  # the listening socket is closed: the rest of their bodies now
            request.send_body()

        for request in requests:
            status, headers, body = request.response()
            assert status == 200, body[:300]
            images = np.load(io.BytesIO(body), allow_pickle=False)
            assert images.shape == (1024, 28, 28) and images.dtype == np.float32
            if request in uploading:  # answered during the shutdown: no keep-alive
                assert headers.get("connection") == "close", headers
        code = process.wait(timeout=grace + 30)
    log = log_path.read_text()
    assert "Application shutdown complete" in log and "timeout graceful shutdown exceeded" not in log
    # uvicorn ends a graceful shutdown by re-raising the signal it caught: -SIGTERM, not a crash
    assert code in (0, -signal.SIGTERM), code


@pytest.mark.slow
def test_grace_time_from_the_environment_bounds_the_shutdown(tmp_path):
    """A request that never finishes (its body never comes) holds the shutdown only for the grace time."""
    with serving([SMALL], tmp_path, grace_seconds=2) as (process, port, log_path):
        body = npy_bytes(np.zeros((1, 28, 28), np.uint8))
        stuck = HeldRequest(port, f"/classify?model={SMALL}", body, {"Content-Type": "application/x-npy"})
        process.send_signal(signal.SIGTERM)
        # without the setting uvicorn waits for the stuck request for ever, and this wait times out
        code = process.wait(timeout=60)
        stuck.sock.close()
    assert "timeout graceful shutdown exceeded" in log_path.read_text()
    assert code in (0, -signal.SIGTERM), code


@pytest.mark.slow
def test_a_graceful_shutdown_exits_0(tmp_path):
    with serving([SMALL], tmp_path, grace_seconds=5) as (process, _, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
