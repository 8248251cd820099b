"""Starting a recipe from an exported version of a model (function-preserving deepening, Net2DeeperNet).

The exported SavedModel's variables are read back into its Keras graph rebuilt from the
manifest's config; every layer of the new model that the old one has takes its weights, and
every added 3x3 convolution starts as the identity. An added convolution follows a ReLU and
ends in one, so on non-negative input the deeper model computes exactly what the exported one
did, and training goes on from there instead of from random weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.evaluate import read_manifest


def restore_exported(folder: Path, build: Callable[[dict], keras.Model]) -> keras.Model:
    """The serving model exported in ``folder``, rebuilt by ``build(its config)`` with its weights.

    Raises ``ValueError`` when the rebuilt graph's variables and the SavedModel's differ.
    """
    if not (folder / "manifest.json").exists():
        raise ValueError(f"warm start: no exported model in {folder}")
    serving = build(read_manifest(folder)["training"]["config"])
    try:
        tf.train.Checkpoint(model=serving).read(str(folder / "variables" / "variables")).assert_consumed()
    except (AssertionError, ValueError) as exc:
        raise ValueError(f"warm start: {folder} does not match the rebuilt graph: {exc}") from exc
    return serving


def identity_kernel(kernel_shape: tuple[int, ...]) -> np.ndarray:
    """A convolution kernel (``k, k, c, c``, ``k`` odd) that copies its input through its centre tap."""
    k, k2, c_in, c_out = kernel_shape
    if k != k2 or k % 2 == 0 or c_in != c_out:
        raise ValueError(f"no identity kernel of shape {kernel_shape}")
    kernel = np.zeros(kernel_shape, np.float32)
    kernel[k // 2, k // 2] = np.eye(c_in, dtype=np.float32)
    return kernel


def transfer_weights(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy ``source``'s weights into ``target`` by layer name; added convolutions start as identities.

    Returns the names of the layers started as identities. Raises ``ValueError`` when a shared
    layer's weights differ in shape, or when ``target`` adds a layer with weights that is not a
    ReLU convolution with as many filters as input channels.
    """
    known = {layer.name: layer for layer in source.layers if layer.weights}
    added = []
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name in known:
            weights = known[layer.name].get_weights()
            shapes = [w.shape for w in weights]
            if shapes != [tuple(w.shape) for w in layer.weights]:
                raise ValueError(f"warm start: layer {layer.name} has weights {shapes} in the source")
            layer.set_weights(weights)
            continue
        if not isinstance(layer, keras.layers.Conv2D) or layer.activation is not keras.activations.relu:
            raise ValueError(f"warm start: added layer {layer.name} is not a ReLU convolution")
        layer.set_weights([identity_kernel(tuple(layer.kernel.shape)), np.zeros(layer.bias.shape, np.float32)])
        added.append(layer.name)
    return added
