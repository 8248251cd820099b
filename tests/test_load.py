"""The load script (benchmarks/load.py) keeps working: a 3-second run with 4 clients and a short
overload burst against real uvicorn processes meets every goal it checks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_a_short_load_run_meets_its_goals():
    command = [sys.executable, "benchmarks/load.py", "--seconds", "3", "--clients", "4"]
    command += ["--overload-seconds", "2", "--overload-clients", "32"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "all goals hold" in run.stdout
    for endpoint in ("/encode", "/reconstruct", "/denoise", "/classify", "/cluster"):
        row = re.search(rf"^\| {endpoint} \| (\d+) \| (\d+) \|", run.stdout, re.MULTILINE)
        assert row is not None, run.stdout
        assert int(row[1]) > 0 and int(row[2]) == 0, row[0]
    overload = re.search(r"^\| (\d+) \| (\d+) \| (\d+) \| 0 \| 0 \|", run.stdout, re.MULTILINE)
    assert overload is not None and int(overload[3]) > 0, run.stdout  # some 503s, no other status, no exception
