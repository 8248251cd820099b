"""Compile an exported SavedModel to ``model.tflite``, the form the service runs with LiteRT.

The flatbuffer holds one signature per endpoint, each computing only that endpoint's outputs
(``encode`` runs the encoder alone), and ``serving_default`` with every output, for the
protocol routes that may ask for any set. Each signature takes ``images float32 [N,28,28]``
with a free batch dimension, like the SavedModel's.

The conversion is checked, not trusted: every signature runs on real images in the LiteRT
interpreter and its outputs are compared with the SavedModel's; the largest differences go
into the manifest, and a conversion whose outputs differ beyond tolerance is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

FILE = "model.tflite"
SIGNATURE = "serving_default"
# What each endpoint reads from a model's signature (the service's table, repeated here: the
# two packages share only the exported files). Clustering models with a mixture head answer
# /cluster with cluster_probabilities instead of distances.
ENDPOINT_OUTPUTS = {
    "encode": ("codes",),
    "reconstruct": ("reconstruction",),
    "denoise": ("denoised",),
    "classify": ("probabilities",),
    "cluster": ("cluster", "distances"),
}
# Largest accepted difference from the SavedModel, relative to the output's largest magnitude
# (at least 1): float32 kernels that sum in another order differ by about 1e-6 of it. A mixture's
# posterior exponentiates log-likelihood differences in the hundreds, so near a boundary between
# components those 1e-6 become up to about 1e-2 of probability; the cluster it picks stays the same.
TOLERANCE = {"default": 1e-4, "cluster_probabilities": 2e-2, "cluster": 1e-3}


def endpoint_outputs(endpoint: str, outputs: list[str]) -> tuple[str, ...]:
    """The outputs ``endpoint`` reads from a model whose signature yields ``outputs``."""
    if endpoint == "cluster" and "distances" not in outputs:
        return ("cluster", "cluster_probabilities")
    return ENDPOINT_OUTPUTS[endpoint]


def _signature_function(signature, keys: tuple[str, ...]):
    """A graph function yielding ``keys`` of ``signature``.

    The cluster index is taken again with ``tf.math.argmin``/``argmax`` from the distances or
    the posterior it was chosen from: Keras' argmin/argmax lower to ``BitwiseAnd``, which
    LiteRT's builtin operators lack. Ties aside the index is the same, and the check confirms it.
    """

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="images")])
    def outputs(images):
        everything = signature(images=images)
        result = {key: everything[key] for key in keys if key != "cluster"}
        if "cluster" in keys:
            dtype = everything["cluster"].dtype
            if "distances" in everything:
                result["cluster"] = tf.cast(tf.math.argmin(everything["distances"], axis=-1), dtype)
            else:
                result["cluster"] = tf.cast(tf.math.argmax(everything["cluster_probabilities"], axis=-1), dtype)
        return result

    return outputs


def signature_outputs(manifest: dict) -> dict[str, list[str]]:
    """The signatures ``model.tflite`` gets for a manifest: one per endpoint, and all outputs."""
    names = sorted(manifest["outputs"])
    table = {endpoint: sorted(endpoint_outputs(endpoint, names)) for endpoint in manifest["endpoints"]}
    return {SIGNATURE: names, **table}


def convert(loaded: tf.Module, manifest: dict) -> bytes:
    """The LiteRT flatbuffer of a loaded SavedModel, with :func:`signature_outputs`' signatures."""
    signature = loaded.signatures[SIGNATURE]
    functions = {key: _signature_function(signature, tuple(keys)) for key, keys in signature_outputs(manifest).items()}
    module = tf.Module()
    module.loaded = loaded
    for key, function in functions.items():
        setattr(module, key, function)
    with tempfile.TemporaryDirectory() as staging:
        tf.saved_model.save(module, staging, signatures=functions)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=list(functions))
        return converter.convert()


def compare(reference, flatbuffer: bytes, images: np.ndarray, chunk: int = 64) -> dict[str, float]:
    """Every signature's outputs through LiteRT against the SavedModel signature ``reference``'s, on ``images``.

    Float outputs give their largest absolute difference relative to the output's largest
    magnitude (at least 1); integer outputs (the cluster index) the fraction that differ.
    Keys are ``<signature>.<output>``.
    """
    from ai_edge_litert.interpreter import Interpreter

    expected = {key: value.numpy() for key, value in reference(images=tf.constant(images)).items()}
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    differences = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), chunk):
            for name, value in runner(images=images[start : start + chunk]).items():
                parts.setdefault(name, []).append(value)
        for name, chunks in parts.items():
            got, want = np.concatenate(chunks), expected[name]
            if got.dtype != want.dtype or got.shape != want.shape:
                raise ValueError(
                    f"{key}.{name}: LiteRT gives {got.dtype} {got.shape}, SavedModel {want.dtype} {want.shape}"
                )
            if got.dtype.kind == "f":
                scale = max(1.0, float(np.max(np.abs(want))))
                differences[f"{key}.{name}"] = float(np.max(np.abs(got - want))) / scale
            else:
                differences[f"{key}.{name}"] = float(np.mean(got != want))
    return differences


def write_tflite(folder: Path, manifest: dict, images: np.ndarray) -> tuple[dict, dict]:
    """Write ``folder/model.tflite`` for the SavedModel there (loaded once for all of it); return the
    manifest's ``litert`` entry and the SavedModel's tensor names (:func:`tensor_names`).

    ``images`` (test images of the model's dataset) check the conversion; an output off by more
    than its :data:`TOLERANCE` (cluster indices: the fraction that differ) stops it.
    """
    loaded = tf.saved_model.load(str(folder))
    signature = loaded.signatures[SIGNATURE]
    flatbuffer = convert(loaded, manifest)
    differences = compare(signature, flatbuffer, images)
    bad = {
        key: value
        for key, value in differences.items()
        if value > TOLERANCE.get(key.partition(".")[2], TOLERANCE["default"])
    }
    if bad:
        raise ValueError(f"the LiteRT conversion of {folder} differs from the SavedModel: {bad}")
    (folder / FILE).write_bytes(flatbuffer)
    entry = {
        "file": FILE,
        "signatures": signature_outputs(manifest),
        "converter": f"tensorflow {tf.__version__}",
        "checked_images": len(images),
        "largest_difference": max(differences.values(), default=0.0),
        "differences": {key: float(f"{value:.3g}") for key, value in sorted(differences.items())},
    }
    return entry, tensor_names(signature)


def tensor_names(signature) -> dict[str, dict[str, str]]:
    """The graph tensor names of a SavedModel's ``serving_default`` (TF Serving's metadata shows them)."""
    return {
        "inputs": {"images": signature.inputs[0].name},
        "outputs": {key: tensor.name for key, tensor in sorted(signature.structured_outputs.items())},
    }
