"""One builder per recipe of RECIPES.md, each a short Functional-API function.

Every autoencoder takes images ``[N, 28, 28]`` in 0..1 and has sub-models named
``encoder`` and ``decoder``; the serving models of :func:`serving_model` put the
recipe's preprocessing and heads into one graph with named outputs.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from training.layers import ClusterHead, DenseTranspose, Destandardize, Standardize

IMAGE_SHAPE = (28, 28)


def _dense_autoencoder(name, sizes, activation, output_activation="sigmoid", kernel_init="glorot_uniform"):
    """Encoder 784-sizes..., decoder the mirror image; returns the autoencoder model."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = layers.Flatten(name="flatten")(images)
    for i, size in enumerate(sizes):
        x = layers.Dense(size, activation=activation, kernel_initializer=kernel_init, name=f"encoder_dense_{i + 1}")(x)
    encoder = keras.Model(images, x, name="encoder")

    codes = keras.Input((sizes[-1],), name="codes")
    y = codes
    for i, size in enumerate(reversed(sizes[:-1])):
        y = layers.Dense(size, activation=activation, kernel_initializer=kernel_init, name=f"decoder_dense_{i + 1}")(y)
    y = layers.Dense(28 * 28, activation=output_activation, name="decoder_output")(y)
    y = layers.Reshape(IMAGE_SHAPE, name="reconstruction")(y)
    decoder = keras.Model(codes, y, name="decoder")
    return keras.Model(images, decoder(encoder(images)), name=name)


def stacked_mnist() -> keras.Model:
    """Dense 784-256-128-256-784, sigmoid everywhere."""
    return _dense_autoencoder("mnist_stacked", [256, 128], "sigmoid")


def pretraining_autoencoder_mnist() -> keras.Model:
    """Dense 784-128-64-128-784 sigmoid: the autoencoder that pretrains the MNIST classifier."""
    return _dense_autoencoder("mnist_pretraining", [128, 64], "sigmoid")


def denoising_mnist(deep: bool = False) -> keras.Model:
    """Dense 784-256-784 (shallow) or 784-256-128-256-784 (deep), sigmoid."""
    sizes = [256, 128] if deep else [256]
    return _dense_autoencoder("mnist_denoising_" + ("deep" if deep else "shallow"), sizes, "sigmoid")


def stacked_fashion() -> keras.Model:
    """Dense 784-100-30 / 30-100-784, selu (LeCun normal), sigmoid out."""
    return _dense_autoencoder("fashion_stacked", [100, 30], "selu", kernel_init="lecun_normal")


def tied_fashion() -> keras.Model:
    """As :func:`stacked_fashion`, the decoder reusing the transposed encoder kernels."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    dense_1 = layers.Dense(100, activation="selu", kernel_initializer="lecun_normal", name="encoder_dense_1")
    dense_2 = layers.Dense(30, activation="selu", kernel_initializer="lecun_normal", name="encoder_dense_2")
    encoder = keras.Model(images, dense_2(dense_1(layers.Flatten(name="flatten")(images))), name="encoder")

    codes = keras.Input((30,), name="codes")
    y = DenseTranspose(dense_2, activation="selu", name="decoder_tied_1")(codes)
    y = DenseTranspose(dense_1, activation="sigmoid", name="decoder_tied_output")(y)
    decoder = keras.Model(codes, layers.Reshape(IMAGE_SHAPE, name="reconstruction")(y), name="decoder")
    return keras.Model(images, decoder(encoder(images)), name="fashion_tied")


def layerwise_phase1_fashion() -> keras.Model:
    """Phase 1 of the greedy recipe: 784-100-784, selu then sigmoid."""
    return _dense_autoencoder("fashion_layerwise_phase1", [100], "selu", kernel_init="lecun_normal")


def layerwise_phase2_fashion() -> keras.Model:
    """Phase 2: 100-30-100 on the phase-1 codes, selu throughout."""
    codes_1 = keras.Input((100,), name="codes_1")
    hidden = layers.Dense(30, activation="selu", kernel_initializer="lecun_normal", name="encoder_dense_2")(codes_1)
    encoder = keras.Model(codes_1, hidden, name="encoder")
    codes = keras.Input((30,), name="codes")
    out = layers.Dense(100, activation="selu", kernel_initializer="lecun_normal", name="decoder_dense_1")(codes)
    decoder = keras.Model(codes, out, name="decoder")
    return keras.Model(codes_1, decoder(encoder(codes_1)), name="fashion_layerwise_phase2")


def layerwise_stack(phase1: keras.Model, phase2: keras.Model) -> keras.Model:
    """Stack the two phases as 784-100-30-100-784, reusing (sharing) their trained layers."""

    def chain(tensor, *models):
        for model in models:
            for layer in model.layers[1:]:
                tensor = layer(tensor)
        return tensor

    images = keras.Input(IMAGE_SHAPE, name="images")
    encoder = keras.Model(
        images, chain(images, phase1.get_layer("encoder"), phase2.get_layer("encoder")), name="encoder"
    )
    codes = keras.Input((30,), name="codes")
    decoder = keras.Model(codes, chain(codes, phase2.get_layer("decoder"), phase1.get_layer("decoder")), name="decoder")
    return keras.Model(images, decoder(encoder(images)), name="fashion_layerwise")


def classifier_on_encoder(encoder: keras.Model, name: str, freeze_encoder: bool = False) -> keras.Model:
    """A softmax layer over 10 classes on top of a (pretrained) encoder."""
    encoder.trainable = not freeze_encoder
    images = keras.Input(IMAGE_SHAPE, name="images")
    probabilities = layers.Dense(10, activation="softmax", name="probabilities")(encoder(images))
    return keras.Model(images, probabilities, name=name)


def lower_layers(encoder: keras.Model, n_layers: int) -> keras.Model:
    """The encoder truncated after its first ``n_layers`` dense layers, sharing their weights."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = images
    dense_seen = 0
    for layer in encoder.layers[1:]:
        x = layer(x)
        dense_seen += isinstance(layer, layers.Dense)
        if dense_seen == n_layers:
            break
    return keras.Model(images, x, name="encoder")


def kmeans_mnist() -> keras.Model:
    """Per-image standardisation, dense 784-256-100 relu / 100-256-784 relu, linear out.

    The model outputs the standardized reconstruction (what it is trained on);
    :func:`serving_model` maps it back to pixels.
    """
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = Standardize(name="standardize")(images)
    x = layers.Dense(256, activation="relu", name="encoder_dense_1")(x)
    x = layers.Dense(100, activation="relu", name="encoder_dense_2")(x)
    encoder = keras.Model(images, x, name="encoder")
    codes = keras.Input((100,), name="codes")
    y = layers.Dense(256, activation="relu", name="decoder_dense_1")(codes)
    y = layers.Dense(28 * 28, activation=None, name="decoder_output")(y)
    decoder = keras.Model(codes, y, name="decoder")
    return keras.Model(images, decoder(encoder(images)), name="mnist_kmeans")


def conv_mnist() -> keras.Model:
    """The convolutional autoencoder whose 196-d latent is shown as a 14x14 image."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = layers.Reshape((28, 28, 1), name="add_channel")(images)
    x = layers.Conv2D(10, 5, padding="same", activation="relu", name="encoder_conv")(x)
    x = layers.MaxPooling2D(pool_size=5, strides=1, padding="valid", name="encoder_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(196, activation=None, name="encoder_latent")(x)
    encoder = keras.Model(images, x, name="encoder")
    codes = keras.Input((196,), name="codes")
    y = layers.Reshape((14, 14, 1), name="latent_image")(codes)
    y = layers.Conv2DTranspose(10, 4, strides=2, padding="same", activation="relu", name="decoder_deconv")(y)
    y = layers.Conv2D(1, 4, padding="same", activation=None, name="decoder_conv")(y)
    decoder = keras.Model(codes, layers.Reshape(IMAGE_SHAPE, name="reconstruction")(y), name="decoder")
    return keras.Model(images, decoder(encoder(images)), name="mnist_conv")


def serving_model(
    trained: keras.Model,
    kind: str,
    centres: np.ndarray | None = None,
) -> keras.Model:
    """The exported graph: ``images [N,28,28]`` in, named outputs out.

    ``kind`` is ``autoencoder`` (codes, reconstruction), ``denoiser`` (codes, denoised),
    ``classifier`` (codes, probabilities) or ``standardized`` (the kmeans recipe, whose
    decoder works in z-score space). ``centres`` adds ``distances`` and ``cluster``.
    Reconstructions are clipped to 0..1, the range the API promises.
    """
    images = keras.Input(IMAGE_SHAPE, name="images")
    outputs = {}
    if kind == "classifier":
        encoder = trained.layers[1]
        outputs["codes"] = codes = encoder(images)
        outputs["probabilities"] = trained.get_layer("probabilities")(codes)
    else:
        codes = trained.get_layer("encoder")(images)
        decoded = trained.get_layer("decoder")(codes)
        if kind == "standardized":
            decoded = Destandardize(name="destandardize")([decoded, images])
        clipped = layers.Activation(lambda t: keras.ops.clip(t, 0.0, 1.0), name="clip_0_1")(decoded)
        outputs["codes"] = codes
        outputs["denoised" if kind == "denoiser" else "reconstruction"] = clipped
    if centres is not None:
        distances, cluster = ClusterHead(centres.astype("float32"), name="cluster_head")(codes)
        outputs["distances"], outputs["cluster"] = distances, cluster
    return keras.Model(images, outputs, name=trained.name + "_serving")
