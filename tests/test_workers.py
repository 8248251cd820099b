"""One service across uvicorn workers: the real launcher (``python -m app.serve app.main:app --workers N``).

Every scrape of ``/metrics`` reports the whole service whichever worker answers it, ``/readyz`` is 200 only
once every worker is ready and says how many of how many, and the directory the launcher shares with its
workers is gone after SIGTERM, leaving its temporary folder (``TMPDIR``) empty. The same test runs with one
worker, where no directory is made at all.

A worker is kept from becoming ready by stopping it (SIGSTOP) before it has loaded its models and letting it
go on (SIGCONT) later: a load as slow as the test needs, with nothing in the service made for the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import MODELS_DIR
from helpers import npy_bytes
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from scripts import local_server

pytestmark = pytest.mark.slow

MODEL = "fashion-mnist-pretrained-classifier"  # the smallest committed model
ROUTE = f"/classify?model={MODEL}"
SERIES = {"method": "POST", "route": "/classify", "model": MODEL, "status": "200"}
BODY = npy_bytes(np.zeros((1, 28, 28), np.uint8))
# The supervisor waits this long for a stopped worker's answer to its health check before it replaces it.
HEALTHCHECK_SECONDS = "60"


@contextmanager
def service(tmp_path: Path, workers: int) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """The launcher over a copy of one committed model, its temporary files in an empty folder of its own."""
    models, scratch = tmp_path / "models", tmp_path / "tmp"
    shutil.copytree(MODELS_DIR / MODEL, models / MODEL)
    scratch.mkdir()
    env = {"AESERVE_MODELS_DIR": str(models), "TMPDIR": str(scratch)}
    options = ("--workers", str(workers), "--timeout-worker-healthcheck", HEALTHCHECK_SECONDS)
    with (tmp_path / "server.log").open("w") as log:
        process, base = local_server.launch("app.main:app", *options, env=env, log=log)
        try:
            yield process, base, scratch
        finally:  # after a failure: stop the workers too, which outlive a supervisor that is killed
            if process.poll() is None:
                shared = shared_dir(scratch)
                pids = worker_pids(shared) if shared else []
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    for pid in [process.pid, *pids]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    process.wait()


def until(condition, what: str, timeout: float = 90.0):
    """Poll ``condition`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def shared_dir(scratch: Path) -> Path | None:
    """The launcher's directory in its temporary folder, once it lists its workers."""
    found = [d for d in scratch.iterdir() if (d / "workers.json").is_file()] if scratch.is_dir() else []
    return found[0] if found else None


def worker_pids(shared: Path) -> list[int]:
    return json.loads((shared / "workers.json").read_text())["pids"]


def get(base: str, path: str) -> httpx.Response | None:
    """One GET on a connection of its own, so that successive calls may reach different workers."""
    try:
        return httpx.get(base + path, timeout=10)
    except httpx.TransportError:  # not listening yet
        return None


def status(base: str, path: str) -> int | None:
    answer = get(base, path)
    return answer.status_code if answer is not None else None


def scrape(base: str) -> dict[str, list]:
    answer = get(base, "/metrics")
    assert answer is not None and answer.status_code == 200
    return {family.name: family.samples for family in text_string_to_metric_families(answer.text)}


def value(samples: list, name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def counted_by(shared: Path, pid: int) -> float:
    """The requests of SERIES counted by worker ``pid`` alone, read from its own file."""
    path = shared / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    samples = [s for m in MultiProcessCollector.merge([str(path)]) for s in m.samples]
    return sum(s.value for s in samples if s.name == "aeserve_requests_total" and s.labels == SERIES)


def post_until_every_worker_answered(base: str, shared: Path | None, workers: int) -> int:
    """POST in rounds of concurrent requests, each on its own connection, until every worker has answered
    some; the number of requests sent."""
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            answers = list(
                pool.map(
                    lambda _: httpx.post(base + ROUTE, content=BODY, headers={"content-type": "application/x-npy"}),
                    range(8),
                )
            )
            assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
            sent += len(answers)
            if shared is None or all(counted_by(shared, pid) > 0 for pid in worker_pids(shared)):
                break
    return sent


def counted(base: str) -> float:
    return value(scrape(base)["aeserve_requests"], "aeserve_requests_total", **SERIES)


def assert_scrapes_report(base: str, sent: int, workers: int, scrapes: int = 10) -> None:
    """Every scrape counts ``sent`` requests, in the counter and the latency histogram alike, and every
    worker's model.

    A worker counts a request once its last bytes are sent, a moment after the client may have read them:
    the scrapes begin once the service has counted them all (never more).
    """

    def all_counted() -> bool:
        seen = counted(base)
        assert seen <= sent, (seen, sent)
        return seen == sent

    until(all_counted, f"{sent} requests counted", timeout=10)
    for _ in range(scrapes):
        metrics = scrape(base)
        assert value(metrics["aeserve_requests"], "aeserve_requests_total", **SERIES) == sent
        latency = metrics["aeserve_request_duration_seconds"]
        route = {"route": "/classify", "model": MODEL}
        assert value(latency, "aeserve_request_duration_seconds_count", **route) == sent
        assert value(latency, "aeserve_request_duration_seconds_bucket", le="+Inf", **route) == sent
        assert value(latency, "aeserve_request_duration_seconds_sum", **route) > 0
        assert value(metrics["aeserve_models_loaded"], "aeserve_models_loaded") == 1
        # with several workers, the number of workers in each state
        states = metrics["aeserve_model_state"]
        assert value(states, "aeserve_model_state", model=MODEL, version="1", state="ready") == workers


def wait_until_ready(base: str) -> list[httpx.Response]:
    """Every answer of /readyz up to and including the first 200."""
    answers: list[httpx.Response] = []

    def ready() -> bool:
        answer = get(base, "/readyz")
        if answer is not None:
            answers.append(answer)
        return answer is not None and answer.status_code == 200

    until(ready, "/readyz answers 200")
    return answers


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_and_readiness_are_the_whole_services(tmp_path, workers):
    with service(tmp_path, workers) as (process, base, scratch):
        shared = None
        if workers > 1:
            shared = until(lambda: shared_dir(scratch), "the launcher's shared directory")
            pids = until(lambda: len(worker_pids(shared)) == workers and worker_pids(shared), "workers listed")
            paused = pids[-1]
            os.kill(paused, signal.SIGSTOP)
            try:
                assert not (shared / f"ready-{paused}").exists(), "the worker was ready before it could be stopped"
                # the other workers load and answer; the one stopped is not ready, so neither is the service
                alone = f"{workers - 1} of {workers} workers ready"  # said by a worker that is ready itself
                seen: list[httpx.Response] = []

                def others_ready() -> bool:
                    answer = get(base, "/readyz")
                    seen.extend([answer] if answer is not None else [])
                    return answer is not None and answer.json().get("error") == alone

                until(others_ready, alone)
                seen.extend(get(base, "/readyz") for _ in range(5))
                assert all(a.status_code == 503 and a.headers["retry-after"] == "1" for a in seen), seen
                assert status(base, "/healthz") == 200  # liveness stays the answering process's own
            finally:
                os.kill(paused, signal.SIGCONT)
        answers = wait_until_ready(base)
        assert all(a.status_code == 503 and "retry-after" in a.headers for a in answers[:-1])
        assert answers[-1].json() == {"status": "ready", "models": 1, "workers": {"ready": workers, "total": workers}}

        sent = post_until_every_worker_answered(base, shared, workers)
        assert_scrapes_report(base, sent, workers)
        if shared is not None:  # both workers answered some
            split = [counted_by(shared, pid) for pid in worker_pids(shared)]
            assert len(split) == workers and all(split) and sum(split) == sent, split
        assert local_server.stop(process) == 0
    assert list(scratch.iterdir()) == [], "the launcher left files in its temporary folder"


def test_a_replaced_worker_keeps_the_counts_and_leaves_no_live_gauges(tmp_path):
    with service(tmp_path, 2) as (process, base, scratch):
        until(lambda: status(base, "/readyz") == 200, "ready")
        shared = shared_dir(scratch)
        sent = post_until_every_worker_answered(base, shared, 2)
        killed, survivor = worker_pids(shared)
        os.kill(killed, signal.SIGKILL)

        replaced = until(lambda: killed not in worker_pids(shared) and worker_pids(shared), "a new worker listed")
        assert survivor in replaced and len(replaced) == 2
        # until the new worker has loaded, the survivor says the service is not ready
        answers = wait_until_ready(base)
        assert "1 of 2 workers ready" in [a.json().get("error") for a in answers]
        assert all(a.status_code == 503 for a in answers[:-1])

        # the killed worker's counts stay; its live gauges and readiness went with it
        assert_scrapes_report(base, sent, 2)
        assert not list(shared.glob(f"gauge_live*_{killed}.db")) and not (shared / f"ready-{killed}").exists()
        assert (shared / f"counter_{killed}.db").exists()
        assert local_server.stop(process) == 0
    assert list(scratch.iterdir()) == []
