"""The few layers the recipes need that Keras does not ship."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


class DenseTranspose(keras.layers.Layer):
    """A dense layer whose kernel is the transpose of another Dense layer's kernel.

    It owns only its bias: gradients flow into the mirrored encoder kernel, which is
    what "tied weights" means.
    """

    def __init__(self, tied_to: keras.layers.Dense, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.tied_to = tied_to
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        units = self.tied_to.kernel.shape[0]
        self.bias = self.add_weight(name="bias", shape=(units,), initializer="zeros")

    def call(self, inputs):
        return self.activation(ops.matmul(inputs, ops.transpose(self.tied_to.kernel)) + self.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.tied_to.kernel.shape[0])


def _image_moments(images):
    flat = ops.reshape(images, (-1, 28 * 28))
    mean = ops.mean(flat, axis=1, keepdims=True)
    # Floor the deviation as tf.image.per_image_standardization does, so blank images stay finite.
    std = ops.maximum(ops.std(flat, axis=1, keepdims=True), 1.0 / 28.0)
    return flat, mean, std


class Standardize(keras.layers.Layer):
    """Per-image z-score over the 784 pixels; output is flat ``[N, 784]``."""

    def call(self, images):
        flat, mean, std = _image_moments(images)
        return (flat - mean) / std

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 28 * 28)


class Destandardize(keras.layers.Layer):
    """Maps a standardized flat reconstruction back to the pixel range of the original image."""

    def call(self, inputs):
        standardized, images = inputs
        _, mean, std = _image_moments(images)
        return ops.reshape(standardized * std + mean, (-1, 28, 28))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 28, 28)


class ClusterHead(keras.layers.Layer):
    """Distances from each code to fixed cluster centres, and the nearest centre's index."""

    def __init__(self, centres, **kwargs):
        super().__init__(**kwargs)
        self.n_clusters, self.code_dim = centres.shape
        self._initial = centres

    def build(self, input_shape):
        self.centres = self.add_weight(
            name="centres",
            shape=(self.n_clusters, self.code_dim),
            initializer=keras.initializers.Constant(self._initial),
            trainable=False,
        )

    def call(self, codes):
        diff = ops.expand_dims(codes, 1) - ops.expand_dims(self.centres, 0)
        distances = ops.sqrt(ops.maximum(ops.sum(diff * diff, axis=-1), 0.0))
        return distances, ops.cast(ops.argmin(distances, axis=-1), "int32")

    def compute_output_spec(self, codes):
        return _scores_and_index(codes.shape[0], self.n_clusters, self.compute_dtype)


class GaussianMixtureHead(keras.layers.Layer):
    """Posterior of a fitted Gaussian mixture with full covariances, and its most likely component.

    Takes scikit-learn's parametrisation: ``means [K,d]``, ``precisions_cholesky [K,d,d]``
    (``P_k`` with ``P_k P_k^T`` the inverse covariance) and ``weights [K]``; the log density of
    component ``k`` is ``log w_k + sum(log diag P_k) - (d log 2π + |(x - μ_k) P_k|²) / 2``.
    """

    def __init__(self, means, precisions_cholesky, weights, **kwargs):
        super().__init__(**kwargs)
        self.n_components, self.dim = means.shape
        self._initial = {
            "means": np.asarray(means, np.float32),
            "precisions_cholesky": np.asarray(precisions_cholesky, np.float32),
            "log_weights": np.log(np.asarray(weights, np.float64)).astype(np.float32),
        }

    def build(self, input_shape):
        for name, value in self._initial.items():
            setattr(
                self,
                name,
                self.add_weight(
                    name=name, shape=value.shape, initializer=keras.initializers.Constant(value), trainable=False
                ),
            )

    def call(self, points):
        projected = ops.einsum("nd,kde->nke", points, self.precisions_cholesky)
        shift = ops.einsum("kd,kde->ke", self.means, self.precisions_cholesky)
        squared = ops.sum(ops.square(projected - ops.expand_dims(shift, 0)), axis=-1)
        log_det = ops.sum(ops.log(ops.diagonal(self.precisions_cholesky, axis1=1, axis2=2)), axis=-1)
        log_joint = self.log_weights + log_det - 0.5 * (self.dim * np.log(2 * np.pi) + squared)
        return ops.softmax(log_joint, axis=-1), ops.cast(ops.argmax(log_joint, axis=-1), "int32")

    def compute_output_spec(self, points):
        return _scores_and_index(points.shape[0], self.n_components, self.compute_dtype)


def _scores_and_index(batch: int | None, n: int, dtype: str) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """A clustering head's outputs: a score per cluster, and the chosen cluster's index (int32, as computed)."""
    return keras.KerasTensor((batch, n), dtype=dtype), keras.KerasTensor((batch,), dtype="int32")


class RandomViews(keras.layers.Layer):
    """A random view of each image for contrastive pretraining (SimCLR's augmentations, for 28x28 grey).

    Per image: a random crop of ``min_scale``..1 of the area (aspect 3/4..4/3) resized back to
    28x28, a left-right flip (when ``flip``), contrast scaled by 1 ± up to ``jitter`` and the
    garment's brightness (not the background's) shifted by up to ± ``jitter / 2``, and with
    probability ``erase_probability`` a square of ``erase_size`` pixels blanked. Random in every
    call, training or not: it is used only to train, never served.
    """

    def __init__(
        self,
        min_scale: float = 0.45,
        flip: bool = True,
        jitter: float = 0.4,
        erase_probability: float = 0.3,
        erase_size: int = 10,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.min_scale, self.flip, self.jitter = min_scale, flip, jitter
        self.erase_probability, self.erase_size = erase_probability, erase_size
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, shape, low=0.0, high=1.0):
        return keras.random.uniform(shape, low, high, seed=self.seed_generator)

    def call(self, images):
        n = ops.shape(images)[0]
        x = ops.expand_dims(images, -1)
        scale = self._uniform((n,), self.min_scale, 1.0)
        ratio = ops.exp(self._uniform((n,), np.log(3 / 4), np.log(4 / 3)))
        height = ops.clip(ops.sqrt(scale * ratio), 0.0, 1.0)
        width = ops.clip(ops.sqrt(scale / ratio), 0.0, 1.0)
        top, left = self._uniform((n,)) * (1 - height), self._uniform((n,)) * (1 - width)
        boxes = ops.stack([top, left, top + height, left + width], axis=1)
        # crop_and_resize has no keras.ops twin; the training code runs on the TensorFlow backend
        x = tf.image.crop_and_resize(x, boxes, tf.range(n), (28, 28))
        if self.flip:
            x = ops.where(self._uniform((n, 1, 1, 1)) < 0.5, ops.flip(x, axis=2), x)
        if self.jitter:
            contrast = self._uniform((n, 1, 1, 1), 1 - self.jitter, 1 + self.jitter)
            brightness = self._uniform((n, 1, 1, 1), -self.jitter / 2, self.jitter / 2)
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            garment = ops.cast(x > 0.02, x.dtype)  # the background stays black
            x = ops.clip((x - mean) * contrast + mean + brightness * garment, 0.0, 1.0)
        if self.erase_probability:
            half = self.erase_size / 2
            centre_y, centre_x = self._uniform((n, 1, 1, 1), 0, 28), self._uniform((n, 1, 1, 1), 0, 28)
            rows = ops.reshape(ops.arange(28, dtype="float32"), (1, 28, 1, 1))
            cols = ops.reshape(ops.arange(28, dtype="float32"), (1, 1, 28, 1))
            erased = (
                (ops.abs(rows - centre_y) < half)
                & (ops.abs(cols - centre_x) < half)
                & (self._uniform((n, 1, 1, 1)) < self.erase_probability)
            )
            x = ops.where(erased, 0.0, x)
        return ops.squeeze(x, -1)

    def compute_output_shape(self, input_shape):
        return input_shape
