"""One builder per recipe of RECIPES.md, each a short Functional-API function.

Every autoencoder takes images ``[N, 28, 28]`` in 0..1 and has sub-models named
``encoder`` and ``decoder``; the serving models of :func:`serving_model` put the
recipe's preprocessing and heads into one graph with named outputs.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from training.layers import ClusterHead, DenseTranspose, Destandardize, GaussianMixtureHead, Standardize

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


def stacked(name: str, sizes: list[int], activation: str, kernel_init: str = "glorot_uniform") -> keras.Model:
    """The ``stacked`` template: dense 784-sizes... and the mirror image, ``activation`` inside, sigmoid out."""
    return _dense_autoencoder(name, sizes, activation, kernel_init=kernel_init)


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


def conv_encoder(
    code_dim: int,
    filters: tuple[int, int] = (32, 64),
    code_activation: str | None = None,
    batch_norm: bool = False,
) -> keras.Model:
    """The convolutional encoder: images to a dense code of ``code_dim`` numbers.

    3x3 convolutions ``f1``, ``f1`` stride 2 (14x14), ``f2``, ``f2`` stride 2 (7x7), relu (after
    batch normalisation when ``batch_norm``), then a dense code.
    """
    f1, f2 = filters
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = layers.Reshape((28, 28, 1), name="add_channel")(images)
    for i, (n_filters, stride) in enumerate(((f1, 1), (f1, 2), (f2, 1), (f2, 2))):
        conv_name = f"encoder_conv_{i + 1}"
        if batch_norm:
            x = layers.Conv2D(n_filters, 3, strides=stride, padding="same", use_bias=False, name=conv_name)(x)
            x = layers.BatchNormalization(name=f"{conv_name}_batch_norm")(x)
            x = layers.ReLU(name=f"{conv_name}_relu")(x)
        else:
            x = layers.Conv2D(n_filters, 3, strides=stride, padding="same", activation="relu", name=conv_name)(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(code_dim, activation=code_activation, name="encoder_code")(x)
    return keras.Model(images, x, name="encoder")


def conv_autoencoder(
    name: str,
    code_dim: int,
    filters: tuple[int, int] = (32, 64),
    code_activation: str | None = None,
    batch_norm: bool = False,
) -> keras.Model:
    """Convolutional autoencoder with a dense code of ``code_dim`` numbers.

    Encoder: :func:`conv_encoder`. Decoder: dense to 7x7x``f2``, two 3x3 transposed convolutions
    of stride 2 (``f1`` filters each, back to 28x28), a 3x3 sigmoid convolution to one channel.
    """
    f1, f2 = filters
    images = keras.Input(IMAGE_SHAPE, name="images")
    encoder = conv_encoder(code_dim, filters, code_activation, batch_norm)

    codes = keras.Input((code_dim,), name="codes")
    y = layers.Dense(7 * 7 * f2, activation="relu", name="decoder_dense")(codes)
    y = layers.Reshape((7, 7, f2), name="decoder_7x7")(y)
    y = layers.Conv2DTranspose(f1, 3, strides=2, padding="same", activation="relu", name="decoder_deconv_14x14")(y)
    y = layers.Conv2DTranspose(f1, 3, strides=2, padding="same", activation="relu", name="decoder_deconv_28x28")(y)
    y = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="decoder_output")(y)
    decoder = keras.Model(codes, layers.Reshape(IMAGE_SHAPE, name="reconstruction")(y), name="decoder")
    return keras.Model(images, decoder(encoder(images)), name=name)


def augmentation(rotation_degrees: float, shift: float, flip: bool = False) -> keras.Model:
    """Random rotation (none when 0), translation (a fraction of the side) and optional horizontal flip.

    Keras preprocessing layers: active only when the model runs in training mode, the
    identity at inference, so the exported graph serves the images unchanged.
    """
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = layers.Reshape((28, 28, 1), name="add_channel")(images)
    if flip:
        x = layers.RandomFlip("horizontal", name="random_flip")(x)
    if rotation_degrees:
        x = layers.RandomRotation(rotation_degrees / 360.0, fill_mode="constant", name="random_rotation")(x)
    x = layers.RandomTranslation(shift, shift, fill_mode="constant", name="random_translation")(x)
    return keras.Model(images, layers.Reshape(IMAGE_SHAPE, name="drop_channel")(x), name="augment")


def conv_classifier(
    encoder: keras.Model, name: str, augment: keras.Model | None, dropout: float, n_classes: int = 10
) -> keras.Model:
    """Softmax over ``n_classes`` classes on a (pretrained) convolutional encoder, with training-time augmentation."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    codes = encoder(augment(images) if augment is not None else images)
    x = layers.Dropout(dropout, name="dropout")(codes)
    return keras.Model(images, layers.Dense(n_classes, activation="softmax", name="probabilities")(x), name=name)


def conv_denoiser(
    name: str,
    filters: tuple[int, int] = (32, 64),
    code_channels: int = 8,
    extra_convs: int = 0,
    extra_convs_28x28: int = 0,
) -> keras.Model:
    """Convolutional encoder-decoder with skip connections at 28x28 and 14x14 (a small U-Net).

    The code is a 7x7x``code_channels`` map (1x1 convolution of the 7x7 features), flattened as
    the ``codes`` output; the decoder upsamples it with transposed convolutions, each stage
    concatenated with the encoder's features of the same size. ``extra_convs`` adds that many
    more 3x3 convolutions to the encoder's 14x14 and 7x7 stages and to the decoder's 14x14 stage,
    ``extra_convs_28x28`` that many to the decoder's 28x28 stage.
    """
    f1, f2 = filters
    images = keras.Input(IMAGE_SHAPE, name="images")
    x = layers.Reshape((28, 28, 1), name="add_channel")(images)
    skip_28 = layers.Conv2D(f1, 3, padding="same", activation="relu", name="encoder_conv_28x28")(x)
    x = layers.Conv2D(f1, 3, strides=2, padding="same", activation="relu", name="encoder_conv_14x14")(skip_28)
    skip_14 = layers.Conv2D(f2, 3, padding="same", activation="relu", name="encoder_conv_14x14_2")(x)
    for i in range(extra_convs):
        skip_14 = layers.Conv2D(f2, 3, padding="same", activation="relu", name=f"encoder_conv_14x14_{i + 3}")(skip_14)
    x = layers.Conv2D(f2, 3, strides=2, padding="same", activation="relu", name="encoder_conv_7x7")(skip_14)
    x = layers.Conv2D(f2, 3, padding="same", activation="relu", name="encoder_conv_7x7_2")(x)
    for i in range(extra_convs):
        x = layers.Conv2D(f2, 3, padding="same", activation="relu", name=f"encoder_conv_7x7_{i + 3}")(x)
    code_map = layers.Conv2D(code_channels, 1, activation="relu", name="encoder_code_7x7")(x)
    y = layers.Conv2DTranspose(f1, 3, strides=2, padding="same", activation="relu", name="decoder_deconv_14x14")(
        code_map
    )
    y = layers.Concatenate(name="decoder_skip_14x14")([y, skip_14])
    y = layers.Conv2D(f1, 3, padding="same", activation="relu", name="decoder_conv_14x14")(y)
    for i in range(extra_convs):
        y = layers.Conv2D(f1, 3, padding="same", activation="relu", name=f"decoder_conv_14x14_{i + 2}")(y)
    y = layers.Conv2DTranspose(f1 // 2, 3, strides=2, padding="same", activation="relu", name="decoder_deconv_28x28")(y)
    y = layers.Concatenate(name="decoder_skip_28x28")([y, skip_28])
    y = layers.Conv2D(f1 // 2, 3, padding="same", activation="relu", name="decoder_conv_28x28")(y)
    for i in range(extra_convs_28x28):
        y = layers.Conv2D(f1 // 2, 3, padding="same", activation="relu", name=f"decoder_conv_28x28_{i + 2}")(y)
    y = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="decoder_output")(y)
    return keras.Model(images, layers.Reshape(IMAGE_SHAPE, name="denoised")(y), name=name)


def denoiser_serving(trained: keras.Model) -> keras.Model:
    """The U-Net denoiser's exported graph: ``codes`` (its flattened 7x7 code map) and ``denoised``."""
    codes = layers.Flatten(name="codes")(trained.get_layer("encoder_code_7x7").output)
    return keras.Model(trained.input, {"codes": codes, "denoised": trained.output}, name=trained.name + "_serving")


def embedding_network(code_dim: int, embedding_dim: int, hidden: int = 256) -> keras.Model:
    """The parametric map from autoencoder codes to a (UMAP) embedding: dense relu, relu, linear."""
    codes = keras.Input((code_dim,), name="codes")
    x = layers.Dense(hidden, activation="relu", name="embedding_dense_1")(codes)
    x = layers.Dense(hidden, activation="relu", name="embedding_dense_2")(x)
    return keras.Model(codes, layers.Dense(embedding_dim, name="embedding")(x), name="embedder")


def projection_head(code_dim: int, hidden: int, out: int) -> keras.Model:
    """SimCLR's projection head: the contrastive loss is taken on its output, the codes stay general."""
    codes = keras.Input((code_dim,), name="codes")
    x = layers.Dense(hidden, activation="relu", name="projection_dense")(codes)
    return keras.Model(codes, layers.Dense(out, name="projection")(x), name="projection_head")


class ContrastivePretrainer(keras.Model):
    """SimCLR (Chen et al. 2020): two random views of every image, pulled together against the batch.

    Each batch of ``n`` images gives ``2n`` views; the loss (NT-Xent) is the cross-entropy of
    finding each view's partner among the other ``2n - 1`` by the cosine similarity of their
    projections over ``temperature``. Labels are never seen. ``encoder`` is what is kept.
    """

    def __init__(self, encoder: keras.Model, head: keras.Model, views: keras.layers.Layer, temperature: float, **kw):
        super().__init__(**kw)
        self.encoder, self.head, self.views, self.temperature = encoder, head, views, temperature
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, images, training=False):
        return self.head(self.encoder(images, training=training), training=training)

    def contrastive_loss(self, images, training: bool):
        n = tf.shape(images)[0]
        projections = self(tf.concat([self.views(images), self.views(images)], axis=0), training=training)
        unit = tf.math.l2_normalize(projections, axis=1)
        similarity = tf.matmul(unit, unit, transpose_b=True) / self.temperature
        similarity -= 1e9 * tf.eye(2 * n)  # a view is not its own partner
        partners = tf.concat([tf.range(n, 2 * n), tf.range(n)], axis=0)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(partners, similarity))

    def train_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss = self.contrastive_loss(images, training=True)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        images, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.loss_tracker.update_state(self.contrastive_loss(images, training=False))
        return {"loss": self.loss_tracker.result()}

    @property
    def metrics(self):
        return [self.loss_tracker]


def scan_head(
    code_dim: int, hidden: int, n_clusters: int, mean: np.ndarray, variance: np.ndarray, name: str = "scan_head"
) -> keras.Model:
    """SCAN's clustering head: standardised codes, one dense relu layer, logits over the clusters."""
    codes = keras.Input((code_dim,), name="codes")
    x = layers.Normalization(mean=mean, variance=variance, name="standardize_codes")(codes)
    x = layers.Dense(hidden, activation="relu", name="cluster_dense")(x)
    return keras.Model(codes, layers.Dense(n_clusters, name="cluster_logits")(x), name=name)


def mixture_trainer(network: keras.Model, mixture: dict[str, np.ndarray], inputs: keras.KerasTensor) -> keras.Model:
    """``network`` (to the embedding) under a fixed mixture head: outputs ``embedding`` and ``cluster_probabilities``.

    What the parametric map is trained with: the embedding against UMAP's, the posterior against
    the mixture's posterior of UMAP's embedding. The mixture's arrays are constants, not trained.
    """
    embedding = layers.Identity(name="embedding")(network(inputs))
    posterior, _ = GaussianMixtureHead(**mixture, name="gmm_head")(embedding)
    # Identity keeps the softmax's tensor, so Keras takes the cross-entropy from its logits (unclipped):
    # clipped probabilities give no gradient to images that sit in the wrong component.
    posterior = layers.Identity(name="cluster_probabilities")(posterior)
    return keras.Model(inputs, {"embedding": embedding, "cluster_probabilities": posterior}, name="mixture_trainer")


def gmm_serving(
    encoder: keras.Model,
    embedder: keras.Model,
    means: np.ndarray,
    precisions_cholesky: np.ndarray,
    weights: np.ndarray,
    name: str,
) -> keras.Model:
    """Images to codes, embedding, and the Gaussian mixture's posterior and most likely component."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    codes = encoder(images)
    embedding = embedder(codes)
    posterior, cluster = GaussianMixtureHead(means, precisions_cholesky, weights, name="gmm_head")(embedding)
    outputs = {"codes": codes, "embedding": embedding, "cluster_probabilities": posterior, "cluster": cluster}
    return keras.Model(images, outputs, name=name)


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
        encoder = trained.get_layer("encoder")
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
