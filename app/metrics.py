"""Prometheus metrics of one app: requests, errors and latency by route and model; batches; models loaded.

Each app owns its :class:`prometheus_client.CollectorRegistry`, so several apps (tests, or the
settings comparisons of the benchmark) never share counters. Under several uvicorn workers
(:mod:`app.workers`), prometheus-client's multiprocess mode instead: every worker writes its figures
to files in the directory the launcher shares, and a scrape of any worker adds up those of all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from app.registry import Registry

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DELAY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
LOADED_HELP = "Model versions loaded and serving"
STATE_HELP = "1 for the state each model version is in"


class ModelsCollector(Collector):
    """Reads the registry at scrape time: versions loaded, and the state of every version found."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("aeserve_models_loaded", LOADED_HELP)
        loaded.add_metric([], sum(len(versions) for versions in self.registry.models.values()))
        yield loaded
        states = GaugeMetricFamily("aeserve_model_state", STATE_HELP, labels=["model", "version", "state"])
        for state in self.registry.states.values():
            states.add_metric([state.name, str(state.version), state.status], 1)
        yield states


class SharedModelGauges:
    """What :class:`ModelsCollector` reports, as gauges of the multiprocess mode, set on every change of the
    registry: versions every live worker serves (``livemin``), and per version and state the number of live
    workers holding it in that state (``livesum``; 0 for a state every worker has left)."""

    def __init__(self, registry: Registry, collectors: CollectorRegistry):
        self.registry = registry
        self.loaded = Gauge("aeserve_models_loaded", LOADED_HELP, multiprocess_mode="livemin", registry=collectors)
        self.states = Gauge(
            "aeserve_model_state",
            STATE_HELP + " (summed over the workers)",
            ["model", "version", "state"],
            multiprocess_mode="livesum",
            registry=collectors,
        )
        self._status: dict[tuple[str, int], str] = {}

    def update(self) -> None:
        """Set the gauges from the registry (on its loading thread)."""
        self.loaded.set(sum(len(versions) for versions in list(self.registry.models.values())))
        for key, state in list(self.registry.states.items()):
            previous, status = self._status.get(key), state.status
            if previous != status:
                if previous is not None:
                    self.states.labels(state.name, str(state.version), previous).set(0)
                self.states.labels(state.name, str(state.version), status).set(1)
                self._status[key] = status


class Metrics:
    """The service's metrics, with the few calls the request path and the batchers make.

    ``shared_dir``: the directory of prometheus-client's multiprocess mode, when this process is one of
    several workers (:mod:`app.workers`); a scrape then reports every worker's figures added up.
    """

    def __init__(self, registry: Registry, shared_dir: Path | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "aeserve_requests",
            "HTTP requests answered, by method, route, model and status",
            ["method", "route", "model", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "aeserve_request_errors",
            "HTTP requests answered with a 4xx or 5xx status, by route, model and status",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "aeserve_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route and model",
            ["route", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "aeserve_batch_size",
            "Images per model call, by model and the signature outputs computed",
            ["model", "outputs"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_delay = Histogram(
            "aeserve_batch_queue_delay_seconds",
            "How long a batch's oldest request waited before its model call, by model and outputs",
            ["model", "outputs"],
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        )
        # The metric children of each label set seen (the labels are bounded: route templates, model names).
        self._children: dict[tuple[str, str, str, int], tuple] = {}
        if shared_dir is None:
            self.registry.register(ModelsCollector(registry))
            ProcessCollector(registry=self.registry)
            self.exposed = self.registry
        else:  # process_* describe one process: the worker a scrape reaches; they are left out
            registry.on_change = SharedModelGauges(registry, self.registry).update
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, str(shared_dir))

    def observe_request(self, method: str, route: str, model: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (method, route, model, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the counting: once per label set
            code = str(status)
            children = self._children[key] = (
                self.requests.labels(method, route, model, code),
                self.errors.labels(route, model, code) if status >= 400 else None,
                self.latency.labels(route, model),
            )
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def observe_batch(self, model: str, outputs: str, images: int, waited: float) -> None:
        """Record one model call of ``images`` whose oldest request waited ``waited`` seconds."""
        self.batch_size.labels(model, outputs).observe(images)
        self.queue_delay.labels(model, outputs).observe(waited)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.exposed)
