"""``python -m app.serve app.main:app [uvicorn options]``: uvicorn's own command line (options and
``UVICORN_*`` environment variables alike), except that a SIGTERM or Ctrl-C that shut the server down
gracefully ends the process with status 0.

uvicorn re-raises the signal after its graceful shutdown, so a clean stop would otherwise look like
a kill (status 143) to a container runtime or a supervisor. With several workers uvicorn's own
supervisor already exits 0.
"""

from __future__ import annotations

import importlib
from types import FrameType

from uvicorn.server import Server

from app.workers import Supervisor

# The module, not the `uvicorn.main` attribute of the package, which is the command (the function main).
uvicorn_main = importlib.import_module("uvicorn.main")


class GracefulServer(Server):
    """A uvicorn server that does not raise a signal again once it has shut down because of it."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def main() -> None:
    """Run uvicorn's command line with :class:`GracefulServer`."""
    uvicorn_main.Server = GracefulServer  # the name uvicorn.main.run builds its server from
    uvicorn_main.Multiprocess = Supervisor  # several workers: shared metrics and readiness (app.workers)
    uvicorn_main.main()


if __name__ == "__main__":
    main()
