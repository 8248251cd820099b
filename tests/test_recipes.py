"""Every builder's shapes, the serving graphs' outputs, and the tied decoder's weight sharing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training import recipes

BATCH = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)

AUTOENCODERS = {
    "stacked_mnist": (recipes.stacked_mnist, 128),
    "pretraining_autoencoder_mnist": (recipes.pretraining_autoencoder_mnist, 64),
    "denoising_shallow": (lambda: recipes.denoising_mnist(deep=False), 256),
    "denoising_deep": (lambda: recipes.denoising_mnist(deep=True), 128),
    "stacked_fashion": (recipes.stacked_fashion, 30),
    "tied_fashion": (recipes.tied_fashion, 30),
    "layerwise_phase1_fashion": (recipes.layerwise_phase1_fashion, 100),
    "conv_mnist": (recipes.conv_mnist, 196),
    "conv_small": (lambda: recipes.conv_autoencoder("conv_small", 32), 32),
}


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_autoencoder_shapes(name):
    build, latent = AUTOENCODERS[name]
    model = build()
    assert model.input_shape == (None, 28, 28)
    assert model.output_shape == (None, 28, 28)
    assert model.get_layer("encoder").output_shape == (None, latent)
    assert model(BATCH).shape == (3, 28, 28)


def test_kmeans_autoencoder_works_in_standardized_space():
    model = recipes.kmeans_mnist()
    assert model.get_layer("encoder").output_shape == (None, 100)
    assert model.output_shape == (None, 784)
    standardized = np.asarray(model.get_layer("encoder").get_layer("standardize")(BATCH))
    np.testing.assert_allclose(standardized.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(axis=1), 1, atol=1e-4)


def test_standardize_keeps_blank_images_finite():
    model = recipes.kmeans_mnist()
    out = recipes.serving_model(model, "standardized")(np.zeros((2, 28, 28), np.float32))
    assert np.isfinite(np.asarray(out["codes"])).all()
    np.testing.assert_allclose(np.asarray(out["reconstruction"]), 0.0, atol=1e-6)


def test_layerwise_phases_and_stack():
    phase1, phase2 = recipes.layerwise_phase1_fashion(), recipes.layerwise_phase2_fashion()
    assert phase2.input_shape == (None, 100) and phase2.output_shape == (None, 100)
    assert phase2.get_layer("encoder").output_shape == (None, 30)
    stacked = recipes.layerwise_stack(phase1, phase2)
    assert stacked.get_layer("encoder").output_shape == (None, 30)
    assert stacked(BATCH).shape == (3, 28, 28)
    # the stack shares the phases' layers: same variables, not copies
    stack_vars = {id(v) for v in stacked.weights}
    assert {id(v) for v in phase1.weights} <= stack_vars and {id(v) for v in phase2.weights} <= stack_vars


def test_tied_decoder_owns_no_kernel():
    model = recipes.tied_fashion()
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    encoder_kernels = {id(v) for v in encoder.weights if "kernel" in v.path}
    own = [v for layer in decoder.layers for v in layer._trainable_variables]
    assert own and all("bias" in v.path for v in own), [v.path for v in own]
    decoder_kernels = {id(v) for v in decoder.weights if "kernel" in v.path}
    assert decoder_kernels == encoder_kernels
    # 784*100 + 100 + 100*30 + 30 in the encoder; only 100 + 784 biases more in the decoder
    assert model.count_params() == (784 * 100 + 100 + 100 * 30 + 30) + (100 + 784)


def test_tied_decoder_follows_the_encoder_kernel():
    model = recipes.tied_fashion()
    decoder = model.get_layer("decoder")
    codes = np.random.default_rng(1).normal(size=(2, 30)).astype(np.float32)
    before = np.asarray(decoder(codes))
    kernel = model.get_layer("encoder").get_layer("encoder_dense_2").kernel
    kernel.assign(kernel * 2.0)
    assert not np.allclose(before, np.asarray(decoder(codes)))
    # and gradients of the reconstruction loss reach the encoder kernels through the decoder
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = keras.ops.mean((decoder(codes) - 0.5) ** 2)
    grad = tape.gradient(loss, kernel.value)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0


def test_classifier_on_encoder_and_lower_layers():
    encoder = recipes.stacked_fashion().get_layer("encoder")
    lower = recipes.lower_layers(encoder, 1)
    assert lower.output_shape == (None, 100)
    classifier = recipes.classifier_on_encoder(lower, "c", freeze_encoder=True)
    assert classifier.output_shape == (None, 10)
    assert lower.trainable is False
    assert [w.path for w in classifier.trainable_weights] == ["probabilities/kernel", "probabilities/bias"]
    probs = np.asarray(classifier(BATCH))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("kind", "build", "expected"),
    [
        ("autoencoder", recipes.stacked_mnist, {"codes": (3, 128), "reconstruction": (3, 28, 28)}),
        ("denoiser", recipes.denoising_mnist, {"codes": (3, 256), "denoised": (3, 28, 28)}),
        ("standardized", recipes.kmeans_mnist, {"codes": (3, 100), "reconstruction": (3, 28, 28)}),
    ],
)
def test_serving_model_outputs(kind, build, expected):
    out = recipes.serving_model(build(), kind)(BATCH)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    image_key = "denoised" if kind == "denoiser" else "reconstruction"
    values = np.asarray(out[image_key])
    assert values.min() >= 0.0 and values.max() <= 1.0


def test_serving_model_with_cluster_head():
    centres = np.random.default_rng(2).normal(size=(10, 196)).astype(np.float32)
    out = recipes.serving_model(recipes.conv_mnist(), "autoencoder", centres=centres)(BATCH)
    distances = np.asarray(out["distances"])
    codes = np.asarray(out["codes"])
    expected = np.linalg.norm(codes[:, None, :] - centres[None], axis=-1)
    np.testing.assert_allclose(distances, expected, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(out["cluster"]), expected.argmin(axis=1))


def test_classifier_serving_model():
    encoder = recipes.pretraining_autoencoder_mnist().get_layer("encoder")
    out = recipes.serving_model(recipes.classifier_on_encoder(encoder, "c"), "classifier")(BATCH)
    assert tuple(out["codes"].shape) == (3, 64) and tuple(out["probabilities"].shape) == (3, 10)


def test_conv_classifier_augments_only_in_training():
    encoder = recipes.conv_autoencoder("pretraining", 16, (4, 8), code_activation="relu").get_layer("encoder")
    augment = recipes.augmentation(rotation_degrees=10.0, shift=0.1, flip=True)
    classifier = recipes.conv_classifier(encoder, "c", augment, dropout=0.5)
    assert classifier.output_shape == (None, 10)
    np.testing.assert_allclose(np.asarray(augment(BATCH, training=False)), BATCH)
    assert not np.allclose(np.asarray(augment(BATCH, training=True)), BATCH)
    out = recipes.serving_model(classifier, "classifier")(BATCH)
    assert tuple(out["codes"].shape) == (3, 16) and tuple(out["probabilities"].shape) == (3, 10)
    # the exported graph holds no augmentation and gives what the classifier gives at inference
    at_inference = np.asarray(classifier(BATCH, training=False))
    np.testing.assert_allclose(np.asarray(out["probabilities"]), at_inference, rtol=1e-5)


def test_conv_denoiser_serving_outputs():
    model = recipes.conv_denoiser("d", (8, 16), code_channels=4)
    out = recipes.denoiser_serving(model)(BATCH)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"codes": (3, 7 * 7 * 4), "denoised": (3, 28, 28)}
    values = np.asarray(out["denoised"])
    assert values.min() >= 0.0 and values.max() <= 1.0


def test_conv_denoiser_extra_convs_deepen_three_stages_only():
    plain = recipes.conv_denoiser("d", (8, 16), code_channels=4)
    deeper = recipes.conv_denoiser("d", (8, 16), code_channels=4, extra_convs=2)
    added = {layer.name for layer in deeper.layers} - {layer.name for layer in plain.layers}
    assert added == {
        "encoder_conv_14x14_3",
        "encoder_conv_14x14_4",
        "encoder_conv_7x7_3",
        "encoder_conv_7x7_4",
        "decoder_conv_14x14_2",
        "decoder_conv_14x14_3",
    }
    out = recipes.denoiser_serving(deeper)(BATCH)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"codes": (3, 7 * 7 * 4), "denoised": (3, 28, 28)}


def test_conv_denoiser_extra_convs_28x28_deepen_the_last_decoder_stage():
    plain = recipes.conv_denoiser("d", (8, 16), code_channels=4, extra_convs=1)
    deeper = recipes.conv_denoiser("d", (8, 16), code_channels=4, extra_convs=1, extra_convs_28x28=2)
    added = {layer.name for layer in deeper.layers} - {layer.name for layer in plain.layers}
    assert added == {"decoder_conv_28x28_2", "decoder_conv_28x28_3"}
    assert deeper.get_layer("decoder_conv_28x28_3").output.shape == (None, 28, 28, 4)
    assert deeper.get_layer("decoder_output").input.shape == (None, 28, 28, 4)


def test_gaussian_mixture_head_matches_scikit_learn():
    from sklearn.mixture import GaussianMixture

    from training.layers import GaussianMixtureHead

    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(loc, scale, size=(60, 3)) for loc, scale in ((0, 1), (4, 0.5), (-3, 2))])
    gmm = GaussianMixture(3, covariance_type="full", random_state=0).fit(points)
    head = GaussianMixtureHead(gmm.means_, gmm.precisions_cholesky_, gmm.weights_)
    posterior, component = head(points.astype(np.float32))
    np.testing.assert_allclose(np.asarray(posterior), gmm.predict_proba(points), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(component), gmm.predict(points))


def test_gmm_serving_outputs():
    encoder = recipes.conv_autoencoder("a", 32, (4, 8)).get_layer("encoder")
    embedder = recipes.embedding_network(32, 10, hidden=16)
    rng = np.random.default_rng(4)
    means = rng.normal(size=(10, 10))
    precisions_cholesky = np.stack([np.eye(10)] * 10)
    out = recipes.gmm_serving(encoder, embedder, means, precisions_cholesky, np.full(10, 0.1), "g")(BATCH)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"codes": (3, 32), "embedding": (3, 10), "cluster_probabilities": (3, 10), "cluster": (3,)}
    # equal weights and identity covariances: the most likely component is the nearest mean
    embedding = np.asarray(out["embedding"])
    nearest = np.linalg.norm(embedding[:, None] - means[None], axis=-1).argmin(axis=1)
    np.testing.assert_array_equal(np.asarray(out["cluster"]), nearest)


def test_mixture_trainer_keeps_the_mixture_fixed():
    embedder = recipes.embedding_network(32, 10, hidden=16)
    mixture = {
        "means": np.zeros((10, 10), np.float32),
        "precisions_cholesky": np.stack([np.eye(10, dtype=np.float32)] * 10),
        "weights": np.full(10, 0.1, np.float32),
    }
    trainer = recipes.mixture_trainer(embedder, mixture, keras.Input((32,), name="codes"))
    out = trainer(np.random.default_rng(5).normal(size=(4, 32)).astype(np.float32))
    assert tuple(out["embedding"].shape) == (4, 10) and tuple(out["cluster_probabilities"].shape) == (4, 10)
    assert {id(w) for w in trainer.trainable_weights} == {id(w) for w in embedder.trainable_weights}


def test_softmax_mixture_posterior_is_the_softmax_of_the_embedding():
    from training.layers import GaussianMixtureHead
    from training.procedures import mixture_log_joint, softmax_mixture

    mixture = softmax_mixture(10)
    logits = np.random.default_rng(6).normal(0.0, 5.0, size=(50, 10)).astype(np.float32)
    posterior, component = GaussianMixtureHead(**mixture)(logits)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(posterior), expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(component), logits.argmax(axis=1))
    np.testing.assert_array_equal(mixture_log_joint(logits, mixture).argmax(axis=1), logits.argmax(axis=1))


def test_confident_subset_keeps_each_clusters_widest_margins():
    from training.procedures import confident_subset

    log_joint = np.array([[5.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 0.5]])
    kept, assigned = confident_subset(log_joint, 0.5)
    np.testing.assert_array_equal(assigned, [0, 0, 0, 1, 1])
    # cluster 0: round(1.5) = 2 of its 3 points (margins 5, 3); cluster 1: 1 of 2 (margin 4)
    np.testing.assert_array_equal(kept, [0, 2, 3])


def test_random_views_keep_shape_and_range_and_follow_their_seed():
    from training.layers import RandomViews

    views = RandomViews(seed=3)(BATCH)
    assert views.shape == (3, 28, 28)
    assert float(np.min(views)) >= 0.0 and float(np.max(views)) <= 1.0
    assert not np.allclose(np.asarray(views), BATCH)
    np.testing.assert_array_equal(np.asarray(RandomViews(seed=3)(BATCH)), np.asarray(views))
    assert not np.allclose(np.asarray(RandomViews(seed=4)(BATCH)), np.asarray(views))


def test_random_views_keep_the_background_black_and_erase_one_square():
    from training.layers import RandomViews

    blank = np.zeros((4, 28, 28), np.float32)
    np.testing.assert_array_equal(np.asarray(RandomViews(erase_probability=0.0, seed=0)(blank)), blank)
    # a white image stays white under any crop; with no jitter only the erased square is black
    white = np.ones((64, 28, 28), np.float32)
    views = np.asarray(RandomViews(min_scale=0.3, jitter=0.0, erase_probability=1.0, erase_size=10, seed=0)(white))
    erased = (views == 0.0).sum(axis=(1, 2))
    assert np.all((erased >= 5 * 5) & (erased <= 10 * 10)), erased  # at least a quarter stays inside the image
    np.testing.assert_array_equal(views[views != 0.0], 1.0)


def test_contrastive_loss_is_log_of_the_candidates_when_every_projection_is_the_same():
    # NT-Xent: each of the 2n views picks its partner among the 2n - 1 others (itself masked out),
    # so identical projections give every candidate the same odds: loss = log(2n - 1).
    from training.layers import RandomViews

    head = recipes.projection_head(32, 16, 8)
    head.get_layer("projection").kernel.assign(np.zeros((16, 8), np.float32))
    head.get_layer("projection").bias.assign(np.ones(8, np.float32))
    encoder = recipes.conv_encoder(32, batch_norm=True)
    pretrainer = recipes.ContrastivePretrainer(encoder, head, RandomViews(seed=0), 0.2)
    loss = float(pretrainer.contrastive_loss(BATCH, training=False))
    assert loss == pytest.approx(np.log(2 * len(BATCH) - 1), rel=1e-5)


def test_contrastive_pretraining_trains_the_encoder_without_labels():
    from training.layers import RandomViews

    encoder = recipes.conv_encoder(32, (8, 16), batch_norm=True)
    pretrainer = recipes.ContrastivePretrainer(encoder, recipes.projection_head(32, 16, 8), RandomViews(seed=0), 0.5)
    pretrainer.compile(optimizer=keras.optimizers.Adam(0.01))
    before = [w.copy() for w in encoder.get_weights()]
    images = np.random.default_rng(1).random((16, 28, 28), dtype=np.float32)
    history = pretrainer.fit(images, None, batch_size=8, epochs=1, verbose=0, validation_data=(images[:8], None))
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, encoder.get_weights(), strict=True))
    assert encoder.output_shape == (None, 32)


def test_scan_losses_reward_neighbours_that_agree_and_clusters_that_spread():
    from training.procedures import scan_losses, scan_objective

    # every image gets the same assignment (0.5, 0.25, 0.25): neighbours agree as much as that allows
    logits = np.tile(np.log(np.array([[0.5, 0.25, 0.25]], np.float32)), (6, 1))
    consistency, entropy = scan_losses(logits, logits[::-1])
    assert float(consistency) == pytest.approx(-np.log(0.5**2 + 2 * 0.25**2), rel=1e-5)
    assert float(entropy) == pytest.approx(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)), rel=1e-5)
    # over every pair: certain, agreeing neighbours in two equal clusters cost nothing but -w log 2
    logits = 100 * np.eye(2, dtype=np.float32)[[0, 0, 0, 1, 1, 1]]  # probabilities 1 and 0 to float32's precision
    neighbours = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    objective = scan_objective(logits, neighbours, entropy_weight=5.0)
    assert objective["disagreement"] == pytest.approx(0.0, abs=1e-6)
    assert objective["loss"] == pytest.approx(-5.0 * np.log(2), rel=1e-5)
    # one image whose neighbours sit in the other cluster: -log(1e-7) for its two pairs, over 12
    neighbours[0] = [3, 4]
    disagreement = scan_objective(logits, neighbours, 5.0)["disagreement"]
    assert disagreement == pytest.approx(-2 * np.log(1e-7) / 12, rel=1e-4)


def test_neighbours_of_joined_codes_weigh_each_column_alike_whatever_its_scale():
    from training.procedures import nearest_neighbours

    rng = np.random.default_rng(5)
    # two groups that the first code tells apart; the second code, on a thousandfold scale, is noise
    group = np.repeat([0, 1], 20)
    first = (group[:, None] * 4.0 + rng.normal(0, 0.3, (40, 2))).astype(np.float32)
    second = rng.normal(0, 1000.0, (40, 1)).astype(np.float32)
    neighbours = nearest_neighbours(np.hstack([first, second]), k=3)
    assert neighbours.shape == (40, 3) and not np.any(neighbours == np.arange(40)[:, None])
    # standardised, the noise weighs as one column of three, not as everything: most neighbours share a group
    assert np.mean(group[neighbours] == group[:, None]) > 0.85
    # unstandardised, the noise would decide
    from sklearn.neighbors import NearestNeighbors

    raw = NearestNeighbors(n_neighbors=3).fit(np.hstack([first, second])).kneighbors(return_distance=False)
    assert np.mean(group[raw] == group[:, None]) < 0.75


def test_scan_head_standardises_codes_to_logits():
    codes = np.random.default_rng(2).normal(3.0, 2.0, size=(64, 32)).astype(np.float32)
    head = recipes.scan_head(32, 16, 10, codes.mean(axis=0), codes.var(axis=0), name="scan_head_3")
    standardized = head.get_layer("standardize_codes")(codes).numpy()
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(axis=0), 1.0, atol=1e-3)
    assert head.output_shape == (None, 10) and head.name == "scan_head_3"
