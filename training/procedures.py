"""How each recipe is trained: optimiser, loss, epochs and phases as RECIPES.md gives them.

Each ``train_*`` function takes the dataset, the recipe's config and a
:class:`Context`, and returns a :class:`Trained` whose ``serving`` model is what
gets exported.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from sklearn.cluster import KMeans

from training import recipes
from training.datasets import Dataset
from training.layers import Standardize
from training.metrics import majority_labels, per_image_mse


@dataclass
class Context:
    """Run-wide settings: seed, how verbose, and an epoch scale for quick runs (tests use tiny ones)."""

    seed: int = 42
    epoch_scale: float = 1.0
    verbose: int | None = None
    trained: dict[str, keras.Model] = field(default_factory=dict)

    def epochs(self, n: int) -> int:
        return max(1, round(n * self.epoch_scale))

    @property
    def fit_verbosity(self) -> int:
        if self.verbose is not None:
            return self.verbose
        return 1 if sys.stdout.isatty() else 2


@dataclass
class Trained:
    """A trained recipe: the graph to export and what the manifest should say about its training."""

    serving: keras.Model
    history: dict[str, dict[str, list[float]]]
    centres: np.ndarray | None = None
    label_hints: list[int] | None = None
    notes: dict = field(default_factory=dict)


def optimizer(name: str, lr: float) -> keras.optimizers.Optimizer:
    """The optimiser a recipe names, at its learning rate."""
    return {"rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[name](lr)


def rounded_accuracy(y_true, y_pred):
    """Keras metric: pixels that agree once rounded to 0/1."""
    return keras.metrics.binary_accuracy(keras.ops.round(y_true), keras.ops.round(y_pred))


# Binary cross-entropy with the "rounded accuracy" metric: how the Fashion-MNIST recipes train.
BCE = {"loss": "binary_crossentropy", "metrics": [rounded_accuracy]}


def fit(model, x, y, val, cfg: dict, ctx: Context, phase: str, loss="mse", metrics=None) -> dict:
    """Compile and fit one phase, printing its wall time; returns the Keras history.

    ``x`` may be a batched ``tf.data.Dataset`` of ``(input, target)`` (``y`` is then None).
    """
    model.compile(optimizer=optimizer(cfg["optimizer"], cfg["lr"]), loss=loss, metrics=metrics or [])
    epochs = ctx.epochs(cfg["epochs"])
    print(f"  {phase}: {cfg['optimizer']} lr {cfg['lr']}, batch {cfg['batch_size']}, {epochs} epochs", flush=True)
    # a tf.data pipeline shuffles itself (and Keras ignores shuffle for it)
    batching = (
        {"shuffle": False} if isinstance(x, tf.data.Dataset) else {"batch_size": cfg["batch_size"], "shuffle": True}
    )
    # Large-step SGD oscillates from epoch to epoch: every phase ends on the weights of its
    # epoch with the lowest validation loss (patience = all epochs, so it never stops early).
    keep_best = keras.callbacks.EarlyStopping("val_loss", patience=epochs, restore_best_weights=True)
    start = time.perf_counter()
    history = model.fit(
        x, y, epochs=epochs, validation_data=val, verbose=ctx.fit_verbosity, callbacks=[keep_best], **batching
    )
    result = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best = int(np.argmin(result["val_loss"]))
    result["best_epoch"] = [best + 1]
    print(f"  {phase}: {time.perf_counter() - start:.1f} s, kept epoch {best + 1} of {epochs}", flush=True)
    return result


def _train_clustered(data: Dataset, cfg: dict, ctx: Context, build, kind: str, standardized_target: bool) -> Trained:
    """Train the autoencoder, then KMeans on its training codes (labels never used to fit it).

    Each cluster's majority training label is kept as its ``label_hint``, for display only.
    """
    x, xv = data.train.pixels(), data.val.pixels()
    if standardized_target:
        standardize = Standardize()
        target, target_val = np.asarray(standardize(x)), np.asarray(standardize(xv))
    else:
        target, target_val = x, xv
    model = build()
    history = fit(model, x, target, (xv, target_val), cfg, ctx, "autoencoder")
    codes = model.get_layer("encoder").predict(x, verbose=0, batch_size=1000)
    kmeans = KMeans(n_clusters=cfg["n_clusters"], n_init=10, random_state=ctx.seed).fit(codes)
    centres = kmeans.cluster_centers_.astype(np.float32)
    hints = majority_labels(data.train.labels, kmeans.labels_, cfg["n_clusters"])
    serving = recipes.serving_model(model, kind, centres=centres)
    return Trained(serving, {"autoencoder": history}, centres, hints)


def train_stacked_mnist(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    x, xv = data.train.pixels(), data.val.pixels()
    model = recipes.stacked_mnist()
    history = fit(model, x, x, (xv, xv), cfg, ctx, "autoencoder")
    return Trained(recipes.serving_model(model, "autoencoder"), {"autoencoder": history})


def train_pretrained_classifier_mnist(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    x, xv = data.train.pixels(), data.val.pixels()
    autoencoder = recipes.pretraining_autoencoder_mnist()
    pretrain = fit(autoencoder, x, x, (xv, xv), cfg["pretrain"], ctx, "pretrain")
    classifier = recipes.classifier_on_encoder(autoencoder.get_layer("encoder"), "mnist_pretrained_classifier")
    finetune = fit(
        classifier,
        x,
        data.train.labels,
        (xv, data.val.labels),
        cfg["finetune"],
        ctx,
        "fine-tune",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return Trained(recipes.serving_model(classifier, "classifier"), {"pretrain": pretrain, "finetune": finetune})


def _noisy(images: np.ndarray, std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images + rng.normal(0.0, std, images.shape).astype(np.float32), 0.0, 1.0)


def noisy_batches(images: np.ndarray, std: float, batch_size: int, seed: int) -> tf.data.Dataset:
    """Fresh Gaussian noise on every pass, clipped to 0..1 (what a client can send); targets clean."""

    def add_noise(clean):
        noise = tf.random.normal(tf.shape(clean), stddev=std)
        return tf.clip_by_value(clean + noise, 0.0, 1.0), clean

    return (
        tf.data.Dataset.from_tensor_slices(images)
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(add_noise, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def train_denoising_mnist(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """Trains the shallow and the deep variant; serves the one with the lower validation MSE."""
    x, xv = data.train.pixels(), data.val.pixels()
    val = (_noisy(xv, cfg["noise_std"], ctx.seed + 1), xv)
    variants, histories = {}, {}
    for variant in ("shallow", "deep"):
        model = recipes.denoising_mnist(deep=variant == "deep")
        batches = noisy_batches(x, cfg["noise_std"], cfg["batch_size"], ctx.seed)
        histories[variant] = fit(model, batches, None, val, cfg, ctx, f"variant {variant}")
        variants[variant] = model
    val_mse = {v: histories[v]["val_loss"][-1] for v in variants}
    best = min(val_mse, key=val_mse.get)
    test_noisy = _noisy(data.test.pixels(), cfg["noise_std"], ctx.seed + 2)
    notes = {
        "selected_variant": best,
        "selected_by": "lowest validation MSE on noisy (clipped) validation images",
        "variants": {
            v: {
                "architecture": "784-256-784" if v == "shallow" else "784-256-128-256-784",
                "val_mse": val_mse[v],
                "test_mse": float(
                    per_image_mse(data.test.pixels(), m.predict(test_noisy, verbose=0, batch_size=1000)).mean()
                ),
            }
            for v, m in variants.items()
        },
    }
    return Trained(recipes.serving_model(variants[best], "denoiser"), histories, notes=notes)


def _train_fashion_autoencoder(build, data: Dataset, cfg: dict, ctx: Context) -> tuple[Trained, keras.Model]:
    x, xv = data.train.pixels(), data.val.pixels()
    model = build()
    history = fit(model, x, x, (xv, xv), cfg, ctx, "autoencoder", **BCE)
    return Trained(recipes.serving_model(model, "autoencoder"), {"autoencoder": history}), model


def train_stacked_fashion(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    trained, model = _train_fashion_autoencoder(recipes.stacked_fashion, data, cfg, ctx)
    ctx.trained["fashion-mnist-stacked"] = model  # the Fashion classifier reuses its encoder
    return trained


def train_tied_fashion(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    return _train_fashion_autoencoder(recipes.tied_fashion, data, cfg, ctx)[0]


def train_layerwise_fashion(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """Greedy: 784-100-784, then 100-30-100 on its codes, then the stack (optionally fine-tuned)."""
    x, xv = data.train.pixels(), data.val.pixels()
    phase1 = recipes.layerwise_phase1_fashion()
    h1 = fit(
        phase1,
        x,
        x,
        (xv, xv),
        cfg["phase1"],
        ctx,
        "phase 1 (784-100-784)",
        **BCE,
    )
    encode_1 = phase1.get_layer("encoder")
    codes, codes_val = encode_1.predict(x, verbose=0, batch_size=1000), encode_1.predict(xv, verbose=0, batch_size=1000)
    phase2 = recipes.layerwise_phase2_fashion()
    h2 = fit(phase2, codes, codes, (codes_val, codes_val), cfg["phase2"], ctx, "phase 2 (100-30-100)")
    stacked = recipes.layerwise_stack(phase1, phase2)
    history = {"phase1": h1, "phase2": h2}
    stacked.compile(**BCE)
    history["stacked_before_finetune"] = {
        k: [float(v)] for k, v in stacked.evaluate(xv, xv, verbose=0, return_dict=True).items()
    }
    if cfg["finetune"]["epochs"]:
        history["finetune"] = fit(
            stacked,
            x,
            x,
            (xv, xv),
            cfg["finetune"],
            ctx,
            "phase 3 (fine-tune the stack)",
            **BCE,
        )
    return Trained(recipes.serving_model(stacked, "autoencoder"), history)


def train_pretrained_classifier_fashion(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """Reuses the Fashion stacked encoder's lower layers (training it first if this run has not)."""
    x, xv = data.train.pixels(), data.val.pixels()
    if "fashion-mnist-stacked" not in ctx.trained:
        print("  pretraining: the fashion-mnist-stacked autoencoder", flush=True)
        train_stacked_fashion(data, STACKED_FASHION, ctx)
    pretrained = ctx.trained["fashion-mnist-stacked"].get_layer("encoder")
    encoder = keras.models.clone_model(pretrained)
    encoder.set_weights(pretrained.get_weights())
    lower = recipes.lower_layers(encoder, cfg["reuse_layers"])
    labels, labeled = data.train.labels, cfg.get("labeled_examples")
    if labeled:
        x, labels = x[:labeled], labels[:labeled]
    # The head is always trained first over the frozen encoder; with plenty of labels the
    # whole network is then fine-tuned, with few (``freeze_encoder``) the encoder stays frozen.
    classifier = recipes.classifier_on_encoder(lower, "fashion_pretrained_classifier", freeze_encoder=True)
    supervised = (x, labels, (xv, data.val.labels))
    kw = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
    history = {"head": fit(classifier, *supervised, cfg["head"], ctx, "head (encoder frozen)", **kw)}
    if not cfg["freeze_encoder"]:
        lower.trainable = True
        history["finetune"] = fit(classifier, *supervised, cfg["finetune"], ctx, "fine-tune all", **kw)
    return Trained(recipes.serving_model(classifier, "classifier"), history)


def train_kmeans_mnist(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    return _train_clustered(data, cfg, ctx, recipes.kmeans_mnist, "standardized", standardized_target=True)


def train_conv_mnist(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    return _train_clustered(data, cfg, ctx, recipes.conv_mnist, "autoencoder", standardized_target=False)


STACKED_FASHION = {"optimizer": "sgd", "lr": 1.5, "batch_size": 32, "epochs": 20}
