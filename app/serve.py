"""``python -m app.serve app.main:app [uvicorn options]``: uvicorn's own command line (options and
``UVICORN_*`` environment variables alike), except that a SIGTERM or Ctrl-C that shut the server down
gracefully ends the process with status 0, and that the service's settings reach uvicorn:

- the HTTP protocol is :class:`app.edge.EdgeProtocol` (uvicorn's httptools protocol, the default with
  ``uvicorn[standard]``, with a head size limit and head, body and send timeouts) unless ``--http`` names
  another; with ``--http h11`` the head limit is h11's ``max_incomplete_event_size`` (400, not 431);
- ``--limit-concurrency`` defaults to ``AESERVE_MAX_CONNECTIONS``;
- uvicorn's own log lines, the supervisor's of several workers included, take ``AESERVE_LOG_FORMAT``
  unless ``--log-config`` is given.

uvicorn re-raises the signal after its graceful shutdown, so a clean stop would otherwise look like
a kill (status 143) to a container runtime or a supervisor. With several workers uvicorn's own
supervisor already exits 0.
"""

from __future__ import annotations

import importlib
from types import FrameType
from typing import Any

from uvicorn.config import LOGGING_CONFIG, Config
from uvicorn.server import Server

from app.observability import uvicorn_log_config
from app.settings import Settings
from app.workers import Supervisor

# The module, not the `uvicorn.main` attribute of the package, which is the command (the function main).
uvicorn_main = importlib.import_module("uvicorn.main")


def apply_settings(config: Config, settings: Settings) -> None:
    """Give uvicorn's ``config`` the service's edge limits and log format, where its command line left
    uvicorn's defaults."""
    if config.http in ("auto", "httptools"):
        config.http = "app.edge:EdgeProtocol"
    elif config.http == "h11" and config.h11_max_incomplete_event_size is None:
        config.h11_max_incomplete_event_size = settings.max_head_bytes
    if config.limit_concurrency is None:
        config.limit_concurrency = settings.max_connections
    if config.log_config is LOGGING_CONFIG:
        config.log_config = uvicorn_log_config(settings.log_format)
        config.configure_logging()


class ServiceConfig(Config):
    """uvicorn's configuration with the service's settings (:func:`apply_settings`), before the app loads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        apply_settings(self, Settings())


class GracefulServer(Server):
    """A uvicorn server that does not raise a signal again once it has shut down because of it."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def main() -> None:
    """Run uvicorn's command line with :class:`ServiceConfig` and :class:`GracefulServer`."""
    uvicorn_main.Config = ServiceConfig  # the names uvicorn.main.run builds its configuration and server from
    uvicorn_main.Server = GracefulServer
    uvicorn_main.Multiprocess = Supervisor  # several workers: shared metrics and readiness (app.workers)
    uvicorn_main.main()


if __name__ == "__main__":
    main()
