"""Several uvicorn workers as one service: the state the launcher shares with its workers.

With more than one worker, ``python -m app.serve`` (:mod:`app.serve`) runs uvicorn's supervisor as
:class:`Supervisor`. Before the workers start it makes a temporary directory (in ``TMPDIR``, else
``/tmp``) and names it in ``PROMETHEUS_MULTIPROC_DIR``, which the workers inherit; it removes it once
they have stopped, after SIGTERM or Ctrl-C as after a failed start. The directory holds

- prometheus-client's multiprocess files, one set per worker, which every worker's ``/metrics`` adds up
  (:mod:`app.metrics`); the supervisor drops the live gauges of each worker that exits;
- ``workers.json``: the process ids of the workers the supervisor runs now, and how many it keeps;
- ``ready-<pid>``: one empty file per worker whose models are all loaded and warmed up.

``/readyz`` (:class:`Worker`) is ready when every worker of ``workers.json`` is. With one worker
uvicorn runs no supervisor and none of this exists: a worker without the directory is the whole service.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from uvicorn.supervisors import Multiprocess

SHARED_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name, read when it is first imported
WORKERS_FILE = "workers.json"


def ready_file(directory: Path, pid: int) -> Path:
    """The file whose presence says that worker ``pid`` is ready."""
    return directory / f"ready-{pid}"


class Supervisor(Multiprocess):
    """uvicorn's supervisor of several workers, owning the directory they share (see the module)."""

    directory: Path | None = None
    _known: frozenset[int] = frozenset()

    def run(self) -> None:
        previous = os.environ.get(SHARED_DIR)
        self.directory = Path(tempfile.mkdtemp(prefix="aeserve-workers-"))
        os.environ[SHARED_DIR] = str(self.directory)
        self._write()  # before any worker starts: a worker that finds no workers.json takes itself for the service
        try:
            super().run()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            if previous is None:
                os.environ.pop(SHARED_DIR, None)
            else:
                os.environ[SHARED_DIR] = previous

    # Workers start, exit and are replaced in these three (handle_signals: SIGHUP, SIGTTIN and SIGTTOU).
    def init_processes(self) -> None:
        super().init_processes()
        self._record()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._record()

    def handle_signals(self) -> None:
        super().handle_signals()
        self._record()

    def _record(self) -> None:
        """Write the workers running now; forget those that exited: their live gauges and readiness."""
        from prometheus_client import multiprocess

        assert self.directory is not None
        pids = frozenset(p.pid for p in self.processes if p.pid is not None)
        if pids == self._known:
            return
        for pid in self._known - pids:
            multiprocess.mark_process_dead(pid, str(self.directory))
            ready_file(self.directory, pid).unlink(missing_ok=True)
        self._known = pids
        self._write()

    def _write(self) -> None:
        assert self.directory is not None
        state = {"pids": sorted(self._known), "workers": self.processes_num}
        partial = self.directory / f".{WORKERS_FILE}"
        partial.write_text(json.dumps(state))
        partial.replace(self.directory / WORKERS_FILE)  # readers see the old list or the new one, never half


@dataclass
class Worker:
    """One worker's view of the shared directory: its own readiness, and how many workers are ready."""

    directory: Path
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def from_environment(cls) -> Worker | None:
        """The worker of a :class:`Supervisor`, or None when this process is the whole service."""
        directory = os.environ.get(SHARED_DIR)
        if not directory or not (Path(directory) / WORKERS_FILE).is_file():
            return None
        return cls(Path(directory))

    def mark_ready(self, ready: bool) -> None:
        """Say whether this worker is ready."""
        path = ready_file(self.directory, self.pid)
        if ready:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def count(self) -> tuple[int, int]:
        """(ready, all): the workers that are ready, and every worker the supervisor runs or means to run."""
        state = json.loads((self.directory / WORKERS_FILE).read_text())
        pids = {*state["pids"], self.pid}
        ready = sum(ready_file(self.directory, pid).exists() for pid in pids)
        return ready, max(len(pids), state["workers"])
