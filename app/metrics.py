"""Prometheus metrics of one app: requests, errors and latency by route and model; batches; models loaded.

Each app owns its :class:`prometheus_client.CollectorRegistry`, so several apps (tests, or the
settings comparisons of the benchmark) never share counters. With several uvicorn workers every
worker keeps its own figures and a scrape reads the worker that answers it; one worker per pod
(README, "Scaling out") keeps the scrape whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from app.registry import Registry

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DELAY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ModelsCollector(Collector):
    """Reads the registry at scrape time: versions loaded, and the state of every version found."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("aeserve_models_loaded", "Model versions loaded and serving")
        loaded.add_metric([], sum(len(versions) for versions in self.registry.models.values()))
        yield loaded
        states = GaugeMetricFamily(
            "aeserve_model_state", "1 for the state each model version is in", labels=["model", "version", "state"]
        )
        for state in self.registry.states.values():
            states.add_metric([state.name, str(state.version), state.status], 1)
        yield states


class Metrics:
    """The service's metrics, with the few calls the request path and the batchers make."""

    def __init__(self, registry: Registry):
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
        self.registry.register(ModelsCollector(registry))
        ProcessCollector(registry=self.registry)

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
        return generate_latest(self.registry)
