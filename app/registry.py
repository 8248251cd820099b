"""The service's models: discovered on disk, checked against their manifests, loaded once, warmed up.

``models/<name>/<version>/`` holds a SavedModel, the same graph as ``model.tflite`` and
``manifest.json``; the manifest (class names, cluster label hints, in-distribution threshold,
metrics) is everything the service knows about a model beyond its graph. The graph runs in the
runtime ``AESERVE_RUNTIME`` names (:mod:`app.runtimes`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from app.batching import BatchConfig, Batcher, ModelThread
from app.errors import ApiError
from app.preprocess import RULES, rule_of
from app.runtimes import Outputs, Runtime, RuntimeLoadError, load_runtime

log = logging.getLogger("aeserve")

# The dataset a request without ``dataset=`` means, when it is served (else the first served, by name).
DEFAULT_DATASET = "mnist"
ENDPOINTS = ("encode", "reconstruct", "denoise", "classify", "cluster")
# How each endpoint ranks the models that serve it, to pick a dataset's default: (test metric, higher is better).
RANKING = {
    "encode": ("mse", False),
    "reconstruct": ("mse", False),
    "denoise": ("mse", False),
    "classify": ("accuracy", True),
    "cluster": ("cluster_acc", True),
}
# What each endpoint reads from a model's signature; a model runs only the part of its graph that yields them.
OUTPUTS = {
    "encode": ("codes",),
    "reconstruct": ("reconstruction",),
    "denoise": ("denoised",),
    "classify": ("probabilities",),
    "cluster": ("cluster", "distances"),
}


@dataclass(eq=False)  # one per loaded version; identity is equality (it keys the model thread's calls)
class ServedModel:
    """One loaded model version and what its manifest says about it.

    Every computation is named by the signature outputs it yields: each endpoint reads a fixed set
    (:meth:`outputs_of`), and the TF Serving and Open Inference Protocol routes may ask for any set.
    Each set gets its own pruned graph function and batcher, made on first use.
    """

    name: str
    version: int
    manifest: dict
    runtime: Runtime | None = field(default=None, repr=False)
    thread: ModelThread | None = field(default=None, repr=False)
    batching: BatchConfig | None = field(default=None, repr=False)
    on_batch: Callable[[str, int, float], None] | None = field(default=None, repr=False)
    functions: dict[tuple[str, ...], Callable[[np.ndarray], Outputs]] = field(default_factory=dict, repr=False)
    batchers: dict[tuple[str, ...], Batcher] = field(default_factory=dict, repr=False)
    # Per output set, the seconds of a call: (fixed part, per image), measured at load (with batching).
    costs: dict[tuple[str, ...], tuple[float, float]] = field(default_factory=dict, repr=False)

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    @property
    def endpoints(self) -> list[str]:
        return self.manifest["endpoints"]

    @property
    def output_names(self) -> list[str]:
        """Every output of the model's signature."""
        return list(self.manifest["outputs"])

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def threshold(self) -> float | None:
        return self.manifest.get("in_distribution", {}).get("threshold")

    @property
    def preprocess(self) -> str:
        """The rule that prepares an image file uploaded for this model (manifest ``preprocess``, else mnist)."""
        return rule_of(self.manifest)

    @property
    def label_hints(self) -> list[str]:
        return self.manifest.get("clusters", {}).get("label_hints", [])

    def outputs_of(self, endpoint: str) -> tuple[str, ...]:
        """The signature outputs ``endpoint`` reads from this model."""
        if endpoint == "cluster" and "distances" not in self.manifest["outputs"]:
            return ("cluster", "cluster_probabilities")
        return OUTPUTS[endpoint]

    def compute(self, images: np.ndarray, outputs: tuple[str, ...]) -> Outputs:
        """The signature ``outputs`` for a ``float32 [N,28,28]`` batch.

        Blocking, and on the model thread only, or while loading (it may make the function).
        """
        function = self.functions.get(outputs)
        if function is None:
            function = self.functions[outputs] = self.runtime.function(outputs)
        return function(images)

    def measure_cost(self, outputs: tuple[str, ...]) -> None:
        """Time warm calls computing ``outputs``: the best of three of 1 image and of 8 images, for
        :meth:`call_cost` (wall time: how long a caller waits)."""

        def best(count: int) -> float:
            images = np.zeros((count, 28, 28), np.float32)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                self.compute(images, outputs)
                times.append(time.perf_counter() - started)
            return min(times)

        one = best(1)
        per_image = max(best(8) - one, 0.0) / 7
        self.costs[outputs] = (max(one - per_image, 0.0), per_image)  # noise may make the 8 dearer than 8 ones

    def call_cost(self, outputs: tuple[str, ...], images: int) -> float:
        """The expected seconds of a call of ``images`` computing ``outputs`` (infinite when not measured)."""
        fixed, per_image = self.costs.get(outputs, (math.inf, math.inf))
        return fixed + per_image * images

    def predict(self, images: np.ndarray, endpoint: str) -> Outputs:
        """What ``endpoint`` needs for a batch; blocking, as :meth:`compute`."""
        return self.compute(images, self.outputs_of(endpoint))

    async def run(self, images: np.ndarray, endpoint: str) -> Outputs:
        """What ``endpoint`` needs for a batch, through its batcher (or a model-thread call without one)."""
        return await self.run_outputs(images, self.outputs_of(endpoint))

    async def run_outputs(self, images: np.ndarray, outputs: tuple[str, ...]) -> Outputs:
        """The signature ``outputs`` for a batch, batched with other requests for the same outputs."""
        if self.batching is None:
            return await self.thread.run(self.compute, images, outputs, key=self)
        batcher = self.batchers.get(outputs)
        if batcher is None:
            label = "+".join(outputs)
            batcher = self.batchers[outputs] = Batcher(
                partial(self.compute, outputs=outputs),
                self.batching,
                name=f"{self.name}-{self.version}-{label}",
                on_batch=partial(self.on_batch, label) if self.on_batch else None,
                thread=self.thread,
                cost=partial(self.call_cost, outputs),
                key=self,
            )
        return await batcher.predict(images)


def _rank(model: ServedModel, endpoint: str) -> tuple[float, str]:
    """Sort key of the models serving ``endpoint``: best test metric first (missing last), then name."""
    metric, higher_is_better = RANKING[endpoint]
    value = model.manifest.get("metrics", {}).get("test", {}).get(metric)
    if value is None:
        return float("inf"), model.name
    return (-value if higher_is_better else value), model.name


@dataclass
class ModelState:
    """What the registry knows of one model version folder: loading, ready or failed (with the reason)."""

    name: str
    version: int
    folder: Path
    status: str = "pending"
    reason: str | None = None
    load_seconds: float | None = None


class ModelLoadError(Exception):
    """A model folder that cannot be served; the message says why."""


def verify_files(folder: Path) -> dict:
    """Read the manifest, check every file it lists against its sha256 and that it lists every file; return it."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise ModelLoadError("manifest.json is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"manifest.json is unreadable ({exc})") from None
    files = manifest.get("files") or {}
    if "saved_model.pb" not in files:
        raise ModelLoadError("manifest.json lists no saved_model.pb")
    litert = manifest.get("litert", {}).get("file")
    if litert and litert not in files:
        raise ModelLoadError(f"manifest.json lists no sha256 for {litert}")
    unlisted = sorted(
        rel
        for rel in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if rel != "manifest.json" and rel not in files
    )
    if unlisted:
        raise ModelLoadError(f"{unlisted[0]} is not listed in manifest.json (added after the model was exported)")
    for rel, digest in files.items():
        path = folder / rel
        if not path.is_file():
            raise ModelLoadError(f"{rel} is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ModelLoadError(f"{rel} does not match its sha256 in manifest.json (changed or corrupt)")
    return manifest


@dataclass
class Registry:
    """Every model version under ``models_dir``; thread-safe reads once loading has finished."""

    models_dir: Path
    runtime: str = "litert"
    model_threads: int = 2
    warmup: bool = True
    batching: BatchConfig | None = field(default_factory=BatchConfig)
    # Told of every batch a batcher runs: (model, outputs, images, seconds its oldest request waited).
    on_batch: Callable[[str, str, int, float], None] | None = None
    # Told after every change of a model state (on the loading thread).
    on_change: Callable[[], None] | None = None
    # Model calls run on this thread (but those the batchers find cheaper than the hand-off, on the loop).
    thread: ModelThread = field(default_factory=ModelThread)
    states: dict[tuple[str, int], ModelState] = field(default_factory=dict)
    models: dict[str, dict[int, ServedModel]] = field(default_factory=dict)
    defaults: dict[str, dict[str, str]] = field(default_factory=dict)
    finished: threading.Event = field(default_factory=threading.Event)
    problem: str | None = None

    def discover(self) -> None:
        """Find ``<name>/<version>/`` folders; each becomes a pending model state.

        A missing or empty models directory is a problem ``/readyz`` reports, and one log line at
        start gives the same reason with the path, which only the log names: responses never show
        the server's file system.
        """
        if not self.models_dir.is_dir():
            self._no_models("does not exist")
            return
        for model_dir in sorted(p for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
            for folder in sorted(versions, key=lambda p: int(p.name)):
                self.states[(model_dir.name, int(folder.name))] = ModelState(model_dir.name, int(folder.name), folder)
        if not self.states:
            self._no_models("holds no <name>/<version>/ model folders")

    def _no_models(self, what: str) -> None:
        self.problem = (
            f"no models to serve: the models directory (AESERVE_MODELS_DIR) {what}; set AESERVE_MODELS_DIR "
            "to the folder of <name>/<version>/ models (default: ./models in the working directory)"
        )
        log.error("%s [AESERVE_MODELS_DIR is %s]", self.problem, self.models_dir.resolve())

    def _load_one(self, state: ModelState) -> None:
        start = time.perf_counter()
        state.status = "loading"
        self._changed()
        try:
            manifest = verify_files(state.folder)
            if "reconstruct" in manifest.get("endpoints", []) and "threshold" not in manifest.get(
                "in_distribution", {}
            ):
                raise ModelLoadError("serves /reconstruct but its manifest has no in_distribution threshold")
            if rule_of(manifest) not in RULES:
                raise ModelLoadError(f"manifest preprocess {rule_of(manifest)!r} is none of {', '.join(RULES)}")
            if manifest.get("name") != state.name or int(manifest.get("version", -1)) != state.version:
                raise ModelLoadError(
                    f"manifest names {manifest.get('name')}/{manifest.get('version')}, folder is "
                    f"{state.name}/{state.version}"
                )
            try:
                runtime = load_runtime(self.runtime, state.folder, manifest, self.model_threads)
            except RuntimeLoadError as exc:
                raise ModelLoadError(str(exc)) from None
            model = ServedModel(
                state.name,
                state.version,
                manifest,
                runtime=runtime,
                thread=self.thread,
                batching=self.batching,
                on_batch=partial(self.on_batch, state.name) if self.on_batch else None,
            )
            missing = {key for e in model.endpoints for key in model.outputs_of(e)} - runtime.output_names
            if missing or runtime.output_names != set(manifest.get("outputs", {})):
                raise ModelLoadError(
                    "the graph's outputs do not match manifest.json and its endpoints"
                    + (f" (missing {', '.join(sorted(missing))})" if missing else "")
                )
            # Each endpoint's function is made and run once here; warm-up runs the sizes the runtime
            # prepares per shape, up to the largest batch the batcher makes.
            largest = self.batching.max_batch if self.batching else max(runtime.warm_sizes)
            sizes = [s for s in runtime.warm_sizes if s <= largest] if self.warmup else [1]
            for endpoint in model.endpoints:
                for size in sizes:
                    model.predict(np.zeros((size, 28, 28), np.float32), endpoint)
            if self.batching is not None:  # what calls the loop may run, and the time a queue stands for
                for outputs in {model.outputs_of(endpoint) for endpoint in model.endpoints}:
                    model.measure_cost(outputs)
            self.models.setdefault(state.name, {})[state.version] = model
            state.status = "ready"
        except ModelLoadError as exc:
            state.status, state.reason = "failed", str(exc)
            log.error("model %s/%s not served: %s", state.name, state.version, exc)
        state.load_seconds = round(time.perf_counter() - start, 3)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def load_all(self) -> None:
        """Discover, verify, load and warm every model version, then choose each endpoint's defaults (once)."""
        if self.finished.is_set():
            return
        try:
            self.discover()
            self._changed()
            for state in self.states.values():
                self._load_one(state)
            self.defaults = self._choose_defaults()
            # Loading leaves long-lived objects (millions under TensorFlow); a full garbage collection
            # walking them stalls every request. Freeze them out of the collector's view.
            gc.collect()
            gc.freeze()
        finally:
            self.finished.set()

    @property
    def datasets(self) -> list[str]:
        """Every dataset a loaded model was trained on (its manifest's ``dataset``), sorted."""
        return sorted({m.dataset for m in self.latest_models()})

    def _choose_defaults(self) -> dict[str, dict[str, str]]:
        datasets = self.datasets
        defaults: dict[str, dict[str, str]] = {d: {} for d in datasets}
        for endpoint in RANKING:
            for dataset in datasets:
                candidates = [m for m in self.latest_models() if m.dataset == dataset and endpoint in m.endpoints]
                if candidates:
                    defaults[dataset][endpoint] = min(candidates, key=lambda m, e=endpoint: _rank(m, e)).name
        return defaults

    def latest_models(self) -> list[ServedModel]:
        """The newest loaded version of every model."""
        return [versions[max(versions)] for _, versions in sorted(self.models.items())]

    @property
    def ready(self) -> bool:
        return (
            self.finished.is_set() and self.problem is None and all(s.status == "ready" for s in self.states.values())
        )

    def not_ready_reason(self) -> str:
        """Why ``/readyz`` is not ready, in words."""
        if self.problem:
            return self.problem
        if not self.finished.is_set():
            pending = [f"{s.name}/{s.version}" for s in self.states.values() if s.status in ("pending", "loading")]
            return "loading models: " + (", ".join(pending) or "discovering")
        failed = [f"{s.name}/{s.version}: {s.reason}" for s in self.states.values() if s.status == "failed"]
        return "models failed to load: " + "; ".join(failed)

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """A loaded model by name (newest version unless ``version``), or an :class:`ApiError`."""
        versions = self.models.get(name)
        if versions is None:
            known = {state_name for state_name, _ in self.states}
            if name in known:
                state = max((s for s in self.states.values() if s.name == name), key=lambda s: s.version)
                if state.status == "failed":
                    raise ApiError(503, f"model {name} is not available: {state.reason}")
                raise ApiError(503, f"model {name} is still loading", {"Retry-After": "1"})
            raise ApiError(404, f"unknown model {name!r}; GET /models lists the models served")
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            raise ApiError(404, f"model {name} has no version {version}; versions: {sorted(versions)}")
        return versions[version]

    def resolve(self, endpoint: str, dataset: str | None, name: str | None, version: int | None = None) -> ServedModel:
        """The model that answers ``endpoint``: the one named (its newest version, or ``version``), or the
        dataset's default."""
        if dataset is not None and self.finished.is_set() and dataset not in self.defaults:
            raise ApiError(404, f"unknown dataset {dataset!r}; datasets: {', '.join(self.defaults) or 'none'}")
        if name is not None:
            model = self.get(name, version)
            if endpoint not in model.endpoints:
                raise ApiError(
                    404,
                    f"model {name} does not serve /{endpoint}; it serves "
                    + ", ".join(f"/{e}" for e in model.endpoints),
                )
            if dataset is not None and model.dataset != dataset:
                raise ApiError(400, f"model {name} is a {model.dataset} model, not {dataset}")
            return model
        if not self.finished.is_set():
            raise ApiError(503, "models are still loading", {"Retry-After": "1"})
        if dataset is None:
            served = self.defaults
            dataset = DEFAULT_DATASET if DEFAULT_DATASET in served else next(iter(served), DEFAULT_DATASET)
        default = self.defaults.get(dataset, {}).get(endpoint)
        if default is None:
            having = [d for d, endpoints in self.defaults.items() if endpoint in endpoints]
            raise ApiError(
                404,
                f"no model serves /{endpoint} for dataset {dataset}; datasets with one: {', '.join(having) or 'none'}",
            )
        return self.get(default)
