"""What runs a model's graph: LiteRT on ``model.tflite`` (the default), or TensorFlow on the SavedModel.

Both give the service the same thing: for a set of signature outputs, a blocking function from
a ``float32 [N,28,28]`` batch to those outputs as NumPy arrays. LiteRT needs no TensorFlow (whose
import alone takes seconds and hundreds of MB) and calls a small model in microseconds; the export checked its
outputs against the SavedModel's on the whole test set (the manifest's ``litert`` entry).
TensorFlow (``AESERVE_RUNTIME=tensorflow``, with ``pip install aeserve[train]``) runs the
SavedModel itself, as TF Serving would.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("aeserve")

Outputs = dict[str, np.ndarray]
RUNTIMES = ("litert", "tensorflow")
# The signature serving every output; the LiteRT file adds one signature per endpoint.
SIGNATURE = "serving_default"
# A LiteRT call runs at most this many images: each signature's buffers grow to its largest call,
# and past 64 images a call is no cheaper per image, only bigger (a 256-image convolutional call
# holds about 30 MB).
LITERT_CALL_IMAGES = 64
# Calls of at least this many images run on AESERVE_MODEL_THREADS threads, smaller ones on one.
LITERT_PARALLEL_IMAGES = 32
# TensorFlow batches are padded up to one of these sizes, each warmed at load: oneDNN prepares its
# kernels per shape, and a first call at a new size costs milliseconds.
TF_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


_first_call = threading.Lock()
_native_logger_heard = False


@contextmanager
def _native_stderr_as_log() -> Iterator[None]:
    """Lines native code writes to file descriptor 2 meanwhile become log records.

    LiteRT's C++ logger prints plain text to stderr (once per process, as it creates its XNNPACK
    delegate); the service's log is one JSON object per line. JSON lines written meanwhile by the
    service itself pass through unchanged.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.startswith("{"):
                    print(line, file=sys.stderr)
                elif line.strip():
                    log.info("litert: %s", line.strip())


class RuntimeLoadError(Exception):
    """A model file the runtime cannot load; the message says why."""


class Runtime(Protocol):
    """A loaded model graph."""

    output_names: set[str]
    warm_sizes: tuple[int, ...]

    def function(self, outputs: tuple[str, ...]) -> Callable[[np.ndarray], Outputs]:
        """A blocking function computing only ``outputs`` (a sorted tuple) for a batch."""
        ...


def padded_size(count: int) -> int:
    """The warmed TensorFlow batch size a batch of ``count`` images runs at."""
    return next((size for size in TF_BATCH_SIZES if size >= count), count)


class LiteRtModel:
    """``model.tflite`` in LiteRT interpreters (XNNPACK kernels): one on one thread for calls of fewer
    than ``LITERT_PARALLEL_IMAGES`` images, one on ``threads`` threads for larger calls.

    Small calls stay on one thread because waking a second one costs them more than it saves, and
    on a busy machine it may not get a core at once. Each signature is its own subgraph with its
    own buffers, resized to each batch's size: a resize costs a few microseconds, so batches run
    unpadded. An output set that is some endpoint's gets that endpoint's signature, which computes
    nothing else; any other set runs ``serving_default`` and keeps what was asked. Not thread-safe:
    one thread at a time calls it (the model thread, or the event loop for the calls it keeps).
    """

    warm_sizes = (1, LITERT_CALL_IMAGES)

    def __init__(self, path: Path, threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._small = Interpreter(model_path=str(path), num_threads=1)
            self._large = Interpreter(model_path=str(path), num_threads=threads) if threads > 1 else self._small
            self._signatures = {key: set(value["outputs"]) for key, value in self._small.get_signature_list().items()}
        except (ValueError, RuntimeError) as exc:
            raise RuntimeLoadError(f"{path.name} does not load ({exc})") from None
        if SIGNATURE not in self._signatures:
            raise RuntimeLoadError(f"{path.name} has no {SIGNATURE} signature")
        self.output_names = self._signatures[SIGNATURE]
        global _native_logger_heard
        with _first_call:
            if not _native_logger_heard:  # the process's first LiteRT call announces its delegate
                with _native_stderr_as_log():
                    self.function(tuple(sorted(self.output_names)))(np.zeros((1, 28, 28), np.float32))
                _native_logger_heard = True

    def function(self, outputs: tuple[str, ...]) -> Callable[[np.ndarray], Outputs]:
        wanted = set(outputs)
        key = next((k for k, names in self._signatures.items() if names == wanted), SIGNATURE)
        small, large = self._small.get_signature_runner(key), self._large.get_signature_runner(key)

        def run(images: np.ndarray) -> Outputs:
            runner = large if len(images) >= LITERT_PARALLEL_IMAGES else small
            if len(images) <= LITERT_CALL_IMAGES:
                result = runner(images=images)
                return {name: result[name] for name in outputs}
            step = LITERT_CALL_IMAGES
            parts = [runner(images=images[i : i + step]) for i in range(0, len(images), step)]
            return {name: np.concatenate([part[name] for part in parts]) for name in outputs}

        return run


class TensorFlowModel:
    """The SavedModel's ``serving_default``, pruned per output set, batches padded to warmed sizes."""

    warm_sizes = TF_BATCH_SIZES

    def __init__(self, folder: Path):
        try:
            import tensorflow as tf
        except ImportError:
            raise RuntimeLoadError(
                "AESERVE_RUNTIME=tensorflow needs TensorFlow: pip install 'aeserve[train]'"
            ) from None
        try:
            self._loaded = tf.saved_model.load(str(folder))
            self._signature = self._loaded.signatures[SIGNATURE]
        except Exception as exc:  # noqa: BLE001 - TensorFlow raises many types for a bad SavedModel
            raise RuntimeLoadError(f"SavedModel does not load ({type(exc).__name__})") from None
        self.output_names = set(self._signature.structured_outputs)

    def function(self, outputs: tuple[str, ...]) -> Callable[[np.ndarray], Outputs]:
        graph = _GraphFunction(self._signature, outputs)

        def run(images: np.ndarray) -> Outputs:
            count = len(images)
            size = padded_size(count)
            if size > count:
                images = np.concatenate([images, np.zeros((size - count, 28, 28), np.float32)])
            results = graph(images)
            return {key: value[:count] for key, value in results.items()} if size > count else results

        return run


class _GraphFunction:
    """A graph function of a signature computing only ``keys``.

    TensorFlow prunes the graph to what ``keys`` need. Calls go through the concrete function's
    flat-tensor entry point, which costs about a third less Python than the keyword signature call.
    """

    def __init__(self, signature: Any, keys: tuple[str, ...]):
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
        def outputs(images):
            everything = signature(images=images)
            return {key: everything[key] for key in keys}

        concrete = outputs.get_concrete_function()
        self.names = tf.nest.flatten({key: key for key in keys})  # the order of the flat outputs
        self._call = concrete.inference_fn.call_flat
        self._captured = list(concrete.captured_inputs)
        self._constant = tf.constant

    def __call__(self, images: np.ndarray) -> Outputs:
        outputs = self._call(self._constant(images, dtype="float32"), *self._captured)
        return {name: value.numpy() for name, value in zip(self.names, outputs, strict=True)}


def load_runtime(kind: str, folder: Path, manifest: dict, threads: int = 2) -> Runtime:
    """The graph of the model version in ``folder`` under runtime ``kind`` (LiteRT calls on ``threads`` threads)."""
    if kind == "tensorflow":
        return TensorFlowModel(folder)
    litert = manifest.get("litert", {}).get("file")
    if not litert:
        raise RuntimeLoadError(
            "manifest.json lists no model.tflite for LiteRT: run `python -m training convert`, "
            "or serve with AESERVE_RUNTIME=tensorflow"
        )
    return LiteRtModel(folder / litert, threads)
