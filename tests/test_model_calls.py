"""The model-call benchmark (benchmarks/model_calls.py) keeps working: a tiny run over every
version of one model prints one row per version and endpoint; an unknown model is refused."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import MODELS_DIR, ROOT

SCRIPT = [sys.executable, "benchmarks/model_calls.py", "--repeats", "1", "--sizes", "1", "2", "--threads", "1"]


def test_every_version_of_one_model_is_timed():
    command = [*SCRIPT, "--models", "mnist-conv-denoiser", "--every-version"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^\| (mnist-conv-denoiser/\d+) \| (/\w+) \| ([\d,]+) \([\d.,]+\) \| ([\d,]+)", run.stdout, re.M)
    versions = sorted(int(p.name) for p in (MODELS_DIR / "mnist-conv-denoiser").iterdir() if p.name.isdigit())
    expected = {(f"mnist-conv-denoiser/{v}", f"/{e}") for v in versions for e in ("encode", "denoise")}
    assert {(model, endpoint) for model, endpoint, *_ in rows} == expected
    assert len(rows) == len(expected)
    assert all(int(one.replace(",", "")) > 0 and int(two.replace(",", "")) > 0 for *_, one, two in rows)


def test_an_unknown_model_is_refused():
    run = subprocess.run([*SCRIPT, "--models", "no-such-model"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "no such model: no-such-model" in run.stderr
    assert run.stdout == ""  # refused before any table is printed
