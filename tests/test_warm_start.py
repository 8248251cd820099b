"""Warm starts: an exported model read back, deepened without changing what it computes, then trained."""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MODELS_DIR

from training import procedures, recipes, warm_start, zoo
from training.datasets import Dataset, Split
from training.evaluate import noisy_images, read_manifest

COMMITTED_V1 = MODELS_DIR / "mnist-conv-denoiser" / "1"


def denoiser_builder(extra: int = 0):
    """Rebuild an exported denoiser from its config, with ``extra`` more convolutions per stage."""

    def build(config: dict) -> keras.Model:
        return recipes.denoiser_serving(
            recipes.conv_denoiser(
                "mnist_conv_denoiser",
                tuple(config["filters"]),
                config["code_channels"],
                config["extra_convs"] + extra,
            )
        )

    return build


def test_identity_kernel_copies_its_input():
    conv = keras.layers.Conv2D(5, 3, padding="same", activation="relu")
    x = np.random.default_rng(0).random((2, 7, 7, 5), dtype=np.float32)
    conv.build(x.shape)
    conv.set_weights([warm_start.identity_kernel((3, 3, 5, 5)), np.zeros(5, np.float32)])
    np.testing.assert_array_equal(np.asarray(conv(x)), x)
    for shape in [(3, 3, 4, 5), (2, 2, 5, 5), (3, 5, 5, 5)]:
        with pytest.raises(ValueError, match="no identity kernel"):
            warm_start.identity_kernel(shape)


def test_deepened_committed_denoiser_computes_what_its_saved_model_does(mnist_test):
    images = mnist_test[0][:64].astype(np.float32) / 255.0
    noisy = noisy_images(images, 0.6, seed=3)
    exported = tf.saved_model.load(str(COMMITTED_V1)).signatures["serving_default"]
    expected = {k: v.numpy() for k, v in exported(images=tf.constant(noisy)).items()}

    source = warm_start.restore_exported(COMMITTED_V1, denoiser_builder())
    config = read_manifest(COMMITTED_V1)["training"]["config"]
    assert config["extra_convs"] == 1
    deeper = recipes.conv_denoiser(
        "mnist_conv_denoiser", tuple(config["filters"]), config["code_channels"], 2, extra_convs_28x28=1
    )
    added = warm_start.transfer_weights(source, deeper)

    assert added == ["encoder_conv_14x14_4", "encoder_conv_7x7_4", "decoder_conv_14x14_3", "decoder_conv_28x28_2"]
    served = {k: np.asarray(v) for k, v in recipes.denoiser_serving(deeper)(noisy).items()}
    for key in ("codes", "denoised"):
        np.testing.assert_allclose(served[key], expected[key], atol=1e-5, err_msg=key)
    # the copies are independent: training the deeper model leaves the restored one as it was
    deeper.get_layer("encoder_conv_28x28").kernel.assign_add(np.ones((3, 3, 1, 32), np.float32))
    np.testing.assert_allclose(np.asarray(source(noisy)["denoised"]), expected["denoised"], atol=1e-5)


def test_restore_refuses_a_graph_other_than_the_exported_one(tmp_path):
    with pytest.raises(ValueError, match="does not match the rebuilt graph"):
        warm_start.restore_exported(COMMITTED_V1, denoiser_builder(extra=1))
    with pytest.raises(ValueError, match="no exported model"):
        warm_start.restore_exported(tmp_path / "mnist-conv-denoiser" / "1", denoiser_builder())


def test_transfer_refuses_changed_shapes_and_added_layers_it_cannot_start_as_identities():
    narrow = recipes.conv_denoiser("d", (8, 16), code_channels=4)
    wide = recipes.conv_denoiser("d", (8, 32), code_channels=4)
    with pytest.raises(ValueError, match="encoder_conv_14x14_2 has weights"):
        warm_start.transfer_weights(narrow, wide)

    inputs = keras.Input((4,))
    small = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))
    hidden = keras.layers.Dense(3, name="dense")(inputs)
    bigger = keras.Model(inputs, keras.layers.Dense(3, activation="relu", name="added")(hidden))
    with pytest.raises(ValueError, match="added layer added is not a ReLU convolution"):
        warm_start.transfer_weights(small, bigger)


def tiny_mnist(mnist_test) -> Dataset:
    """Slices of the MNIST test images standing in for train, validation and test."""
    images, labels = mnist_test
    splits = [Split(images[a:b], labels[a:b]) for a, b in ((0, 256), (256, 320), (320, 384))]
    return Dataset("mnist", *splits, [str(d) for d in range(10)], "MNIST test images", {})


def test_warm_started_denoiser_trains_on_from_the_exported_one(mnist_test):
    data = tiny_mnist(mnist_test)
    cfg = copy.deepcopy(zoo.get("mnist-conv-denoiser").config)
    cfg |= {"warm_start": "mnist-conv-denoiser/1", "extra_convs": 2, "extra_convs_28x28": 0, "epochs": 1, "lr": 1e-5}
    keras.utils.set_random_seed(0)
    trained = procedures.train_conv_denoiser(data, cfg, procedures.Context(verbose=0, models_dir=MODELS_DIR))
    assert trained.notes["warm_start"] == {
        "from": "mnist-conv-denoiser/1",
        "identity_layers": ["encoder_conv_14x14_4", "encoder_conv_7x7_4", "decoder_conv_14x14_3"],
    }
    # one tiny step from the exported weights: still a denoiser, far better than a random start
    clean = data.test.pixels()
    noisy = noisy_images(clean, 0.6, seed=5)
    mse = float(np.mean((np.asarray(trained.serving(noisy)["denoised"]) - clean) ** 2))
    assert mse < 0.03

    with pytest.raises(ValueError, match="needs the models directory"):
        procedures.train_conv_denoiser(data, cfg, procedures.Context(verbose=0))


@pytest.mark.parametrize(("start", "version"), [("2", "2"), ("2", "1"), ("1", "1")])
def test_training_refuses_to_export_over_the_version_it_starts_from(start, version, tmp_path):
    from training.cli import main

    source = f"mnist-conv-denoiser/{start}"
    args = ["--version", version, "--models-dir", str(tmp_path), "--set", f"warm_start={source}"]
    with pytest.raises(SystemExit, match=f"starts from its version {source}; export it as a later"):
        main(["train", "mnist-conv-denoiser", *args])
    assert not any(tmp_path.iterdir())


def test_the_denoiser_recipe_exports_the_version_after_the_one_it_starts_from():
    spec = zoo.get("mnist-conv-denoiser")
    name, _, version = spec.config["warm_start"].partition("/")
    assert name == spec.name and int(version) < spec.version
    assert (MODELS_DIR / spec.config["warm_start"] / "manifest.json").exists()
