"""The ``aeserve`` command: ``serve`` runs the real service (the module's server, 4 images a request), and the
five endpoint commands, ``models``, ``train`` and ``--version`` run against it, on files and a folder."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import png_bytes
from PIL import Image

import aeserve
from aeserve.cli import main
from scripts import local_server

ROOT = Path(__file__).resolve().parent.parent
MAX_BATCH = 4
ENDPOINTS = ("encode", "reconstruct", "denoise", "classify", "cluster")


def aeserve_command(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``aeserve ARGS`` in a new process (``python -m aeserve``, what the console script runs)."""
    return subprocess.run(
        [sys.executable, "-m", "aeserve", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | (env or {}),
        timeout=120,
        **kwargs,
    )


@pytest.fixture(scope="module")
def service():
    """``aeserve serve --host 127.0.0.1 --port P``; stopped with SIGTERM, which must end it with status 0."""
    port = local_server.free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aeserve", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=os.environ | {"AESERVE_MAX_BATCH": str(MAX_BATCH), "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, f"aeserve serve exited with {process.returncode}"
        assert time.monotonic() < deadline, "aeserve serve was not ready within 120 s"
        time.sleep(0.05)
    yield base
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder of 6 PNG files (two in a subfolder), a ``.npy`` array of 3 images, and a file to skip."""
    root = tmp_path_factory.mktemp("inputs") / "digits"
    (root / "more").mkdir(parents=True)
    drawn = np.load(ROOT / "examples" / "digits.npy")
    for i in range(6):
        digit = 255 - np.kron(np.roll(drawn[i % 3], i // 3, axis=1), np.ones((3, 3), np.uint8))
        (root / ("more" if i >= 4 else ".") / f"d{i}.png").write_bytes(png_bytes(digit))
    np.save(root / "batch.npy", drawn)
    (root / "notes.txt").write_text("not an image")
    return root


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_serve_runs_the_service(service):
    listing = httpx.get(f"{service}/models").json()
    assert listing["limits"]["max_batch"] == MAX_BATCH
    assert all(m["status"] == "ready" for m in listing["models"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_commands_on_a_folder_give_the_client_answers(service, folder, tmp_path, capsys, endpoint):
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, endpoint, str(folder), "--url", service, "--json", "--out", str(out))
    assert code == 0, stderr
    records = lines(stdout)
    pngs = sorted(folder.rglob("*.png"))
    assert [r["source"] for r in records] == [str(p) for p in pngs] + [f"{folder / 'batch.npy'}[{i}]" for i in range(3)]
    with aeserve.Client(service) as client:
        call = getattr(client, endpoint)
        expected = [call(pngs), call(np.load(folder / "batch.npy"))]
    rows = [(result, i) for result in expected for i in range(len(result))]
    for record, (result, i) in zip(records, rows, strict=True):
        assert (record["model"], record["version"]) == (result.model, result.version)
        if endpoint == "encode":
            np.testing.assert_array_equal(np.float32(record["codes"]), result.codes[i])
            np.testing.assert_array_equal(np.load(record["out"]), result.codes[i])
        elif endpoint == "reconstruct":
            assert np.float32(record["error"]) == result.errors[i]
            assert record["in_distribution"] == bool(result.in_distribution[i])
        elif endpoint == "classify":
            assert (record["label"], record["class_name"]) == (result.labels[i], result.class_names[i])
            assert np.float32(record["confidence"]) == result.confidences[i]
            np.testing.assert_array_equal(np.float32(record["probabilities"]), result.probabilities[i])
        elif endpoint == "cluster":
            assert (record["cluster"], record["label_hint"]) == (result.clusters[i], result.label_hints[i])
            np.testing.assert_array_equal(np.float32(record[result.score_kind]), result.scores[i])
        if endpoint in ("reconstruct", "denoise"):
            written = np.asarray(Image.open(record["out"]))
            assert written.shape == (28, 28) and written.dtype == np.uint8
            np.testing.assert_array_equal(written, np.round(result.images[i] * 255).astype(np.uint8))
    if endpoint in ("encode", "reconstruct", "denoise"):
        suffix = ".npy" if endpoint == "encode" else ".png"
        names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        expected_names = {f"digits/{p.relative_to(folder).with_suffix(suffix).as_posix()}" for p in pngs}
        assert names == expected_names | {f"digits/batch-{i}{suffix}" for i in range(3)}
    else:
        assert not out.exists()


def test_table_on_files(service, folder, capsys):
    files = [str(folder / "d0.png"), str(folder / "d1.png"), str(folder / "d2.png")]
    code, stdout, _ = run(capsys, "classify", *files, "--url", service)
    assert code == 0
    header, *rows = stdout.splitlines()
    assert header.split() == ["source", "model", "version", "label", "class_name", "confidence"]
    assert [row.split()[0] for row in rows] == files
    assert [row.split()[3] for row in rows] == ["0", "1", "7"]
    code, stdout, _ = run(capsys, "cluster", files[0], "--url", service, "--dataset", "fashion-mnist")
    assert code == 0 and "fashion-mnist" in stdout.splitlines()[1]
    code, stdout, _ = run(capsys, "reconstruct", *files, "--url", service, "--model", "mnist-stacked")
    assert code == 0 and stdout.splitlines()[0].split()[3:] == ["error", "in_distribution"]
    assert all(row.split()[1] == "mnist-stacked" for row in stdout.splitlines()[1:])


def test_denoise_options_and_the_progress_bar(service, folder, tmp_path, capsys):
    code, stdout, stderr = run(
        capsys, "denoise", str(folder), "--url", service, "--noise-std", "0.5", "--seed", "3", "--progress", "--json"
    )
    assert code == 0
    assert len(lines(stdout)) == 9
    # 6 files in requests of 4, then the 3 images of the array: a line redrawn after each request
    shown = [part.split("] ")[1] for part in stderr.strip().split("\r") if part]
    assert shown == ["0/9 images", "4/9 images", "6/9 images", "9/9 images"]
    code, _, stderr = run(capsys, "classify", str(folder), "--url", service, "--no-progress")
    assert code == 0 and stderr == ""


def test_errors_print_the_service_message_and_exit_non_zero(service, folder, capsys):
    code, stdout, stderr = run(capsys, "classify", str(folder / "d0.png"), "--url", service, "--model", "nope")
    assert code == 1 and stdout == ""
    assert stderr.strip() == (
        "aeserve: error: the service answered 404: unknown model 'nope'; GET /models lists the models served"
    )
    code, _, stderr = run(capsys, "classify", str(folder / "notes.txt"), "--url", service)
    assert code == 1 and "answered 400" in stderr
    code, _, stderr = run(capsys, "encode", str(folder / "missing.png"), "--url", service)
    assert code == 2 and "missing.png: no such file or folder" in stderr
    code, _, stderr = run(capsys, "encode", str(folder), "--url", f"http://127.0.0.1:{local_server.free_port()}")
    assert code == 1 and "cannot reach" in stderr
    # the same in a process of its own, as a shell sees it
    done = aeserve_command("reconstruct", str(folder / "d0.png"), "--url", service, "--model-version", "2")
    assert done.returncode == 1
    assert "422: query parameter version: a version of the model named by model, and none is named" in done.stderr
    assert aeserve_command("classify").returncode == 2  # argparse: an input is required


def test_models(service, capsys):
    code, stdout, _ = run(capsys, "models", "--url", service, "--json")
    assert code == 0 and json.loads(stdout) == httpx.get(f"{service}/models").json()
    code, stdout, _ = run(capsys, "models", "--url", service)
    assert code == 0
    names = [line.split()[0] for line in stdout.splitlines()[1:-1]]
    assert names == [m["name"] for m in json.loads(httpx.get(f"{service}/models").text)["models"]]
    assert (
        stdout.splitlines()[-1]
        == f"limits: max_body_bytes 16777216, max_batch {MAX_BATCH}, max_image_pixels 16000000, "
        "max_request_pixels 64000000, max_image_scans 64, decode_cpu_ms 2000"
    )


def test_url_from_the_environment(service, folder):
    done = aeserve_command("classify", str(folder / "d1.png"), "--json", env={"AESERVE_URL": service})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == 1


def test_version_and_console_script():
    done = aeserve_command("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"aeserve {importlib.metadata.version('aeserve')}"
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="aeserve")
    assert script.value == "aeserve.cli:main"


def test_train_passes_through_to_the_training_command_line():
    done = aeserve_command("train", "--help")  # a command of its own (or help) goes as it is
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m training ")
    assert "{list,train,evaluate,convert,report}" in done.stdout
    done = aeserve_command("train", "--seed", "x")  # anything else is an option of `python -m training train`
    assert done.returncode == 2
    assert "python -m training train: error: argument --seed: invalid int value: 'x'" in done.stderr
