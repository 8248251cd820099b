"""How each recipe is trained: optimiser, loss, epochs and phases as RECIPES.md gives them.

Each ``train_*`` function takes the dataset, the recipe's config and a
:class:`Context`, and returns a :class:`Trained` whose ``serving`` model is what
gets exported.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.mixture import GaussianMixture

from training import recipes, warm_start
from training.datasets import Dataset
from training.evaluate import load_saved_model, noisy_images
from training.layers import RandomViews, Standardize
from training.metrics import cluster_accuracy, majority_labels, per_image_mse


@dataclass
class Context:
    """Run-wide settings: seed, how verbose, and an epoch scale for quick runs (tests use tiny ones)."""

    seed: int = 42
    epoch_scale: float = 1.0
    verbose: int | None = None
    models_dir: Path | None = None  # where a config's ``warm_start`` (``<name>/<version>``) is found
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
    mixture: dict[str, np.ndarray] | None = None
    notes: dict = field(default_factory=dict)


def optimizer(name: str, lr) -> keras.optimizers.Optimizer:
    """The optimiser a recipe names, at its learning rate (a number or a schedule)."""
    return {"rmsprop": keras.optimizers.RMSprop, "sgd": keras.optimizers.SGD, "adam": keras.optimizers.Adam}[name](lr)


def rounded_accuracy(y_true, y_pred):
    """Keras metric: pixels that agree once rounded to 0/1."""
    return keras.metrics.binary_accuracy(keras.ops.round(y_true), keras.ops.round(y_pred))


# Binary cross-entropy with the "rounded accuracy" metric: how the Fashion-MNIST recipes train.
BCE = {"loss": "binary_crossentropy", "metrics": [rounded_accuracy]}
# A classifier fitted on the labels.
CLASSIFICATION = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}


class EpochLine(keras.callbacks.Callback):
    """One line per epoch: loss, validation loss, time elapsed and the time left at this pace."""

    def __init__(self, epochs: int, phase: str):
        super().__init__()
        self.epochs, self.phase = epochs, phase

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        elapsed = time.perf_counter() - self.start
        left = elapsed / (epoch + 1) * (self.epochs - epoch - 1)
        val = f", val loss {logs['val_loss']:.5f}" if "val_loss" in logs else ""
        print(
            f"    {self.phase} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.5f}{val}, "
            f"{elapsed:.1f} s elapsed, about {left:.0f} s left",
            flush=True,
        )


def fit(model, x, y, val, cfg: dict, ctx: Context, phase: str, loss="mse", metrics=None) -> dict:
    """Compile and fit one phase, printing its wall time; returns the Keras history.

    ``x`` may be a batched ``tf.data.Dataset`` of ``(input, target)`` (``y`` is then None).
    ``cfg["schedule"] == "cosine"`` decays the learning rate to zero over the phase's steps.
    """
    epochs = ctx.epochs(cfg["epochs"])
    lr = cfg["lr"]
    if cfg.get("schedule") == "cosine":
        steps = int(x.cardinality()) if isinstance(x, tf.data.Dataset) else math.ceil(len(x) / cfg["batch_size"])
        lr = keras.optimizers.schedules.CosineDecay(cfg["lr"], decay_steps=epochs * steps)
    model.compile(optimizer=optimizer(cfg["optimizer"], lr), loss=loss, metrics=metrics or [])
    schedule = f" ({cfg['schedule']} decay)" if cfg.get("schedule") else ""
    print(
        f"  {phase}: {cfg['optimizer']} lr {cfg['lr']}{schedule}, batch {cfg['batch_size']}, {epochs} epochs",
        flush=True,
    )
    # a tf.data pipeline shuffles itself (and Keras ignores shuffle for it)
    batching = (
        {"shuffle": False} if isinstance(x, tf.data.Dataset) else {"batch_size": cfg["batch_size"], "shuffle": True}
    )
    # Large-step SGD oscillates from epoch to epoch: every phase ends on the weights of its
    # epoch with the lowest validation loss (patience = all epochs, so it never stops early).
    keep_best = keras.callbacks.EarlyStopping("val_loss", patience=epochs, restore_best_weights=True)
    start = time.perf_counter()
    # without a verbosity of its own, a run prints one line per epoch (EpochLine) instead of Keras's
    callbacks = [keep_best] if ctx.verbose is not None else [keep_best, EpochLine(epochs, phase)]
    history = model.fit(
        x, y, epochs=epochs, validation_data=val, verbose=ctx.verbose or 0, callbacks=callbacks, **batching
    )
    result = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    best = int(np.argmin(result["val_loss"]))
    result["best_epoch"] = [best + 1]
    print(f"  {phase}: {time.perf_counter() - start:.1f} s, kept epoch {best + 1} of {epochs}", flush=True)
    return result


def _train_clustered(data: Dataset, cfg: dict, ctx: Context, build, kind: str, standardized_target: bool) -> Trained:
    """Train the autoencoder, then KMeans on its training codes (labels never used to fit it).

    KMeans keeps the lowest-inertia partition of ``kmeans_n_init`` starts (10 when not given). The
    partition's silhouette on the training codes (a label-free measure of how well it separates
    them, on a seeded sample of 10,000) goes into the manifest's notes.

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
    kmeans = KMeans(n_clusters=cfg["n_clusters"], n_init=cfg.get("kmeans_n_init", 10), random_state=ctx.seed).fit(codes)
    print(f"  KMeans: inertia {kmeans.inertia_:.6g} (best of {kmeans.n_init} starts)", flush=True)
    centres = kmeans.cluster_centers_.astype(np.float32)
    silhouette = silhouette_score(codes, kmeans.labels_, sample_size=10_000, random_state=ctx.seed)
    print(f"  KMeans: silhouette of the training partition {silhouette:.4f}", flush=True)
    hints = (
        majority_labels(data.train.labels, kmeans.labels_, cfg["n_clusters"])
        if data.labelled
        else [-1] * cfg["n_clusters"]
    )
    serving = recipes.serving_model(model, kind, centres=centres)
    notes = {"kmeans_train_silhouette": float(silhouette), "kmeans_train_inertia": float(kmeans.inertia_)}
    return Trained(serving, {"autoencoder": history}, centres, hints, notes=notes)


def train_stacked(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """The ``stacked`` template: a dense autoencoder, 784-``sizes``... and back (default 784-256-128-256-784,
    sigmoid everywhere, MSE: the mnist-stacked recipe)."""
    x, xv = data.train.pixels(), data.val.pixels()
    model = recipes.stacked(
        _model_name(data, "stacked"),
        cfg.get("sizes", [256, 128]),
        cfg.get("activation", "sigmoid"),
        cfg.get("kernel_init", "glorot_uniform"),
    )
    history = fit(model, x, x, (xv, xv), cfg, ctx, "autoencoder", loss=cfg.get("loss", "mse"))
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
        **CLASSIFICATION,
    )
    return Trained(recipes.serving_model(classifier, "classifier"), {"pretrain": pretrain, "finetune": finetune})


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
    val = (noisy_images(xv, cfg["noise_std"], ctx.seed + 1), xv)
    variants, histories = {}, {}
    for variant in ("shallow", "deep"):
        model = recipes.denoising_mnist(deep=variant == "deep")
        batches = noisy_batches(x, cfg["noise_std"], cfg["batch_size"], ctx.seed)
        histories[variant] = fit(model, batches, None, val, cfg, ctx, f"variant {variant}")
        variants[variant] = model
    val_mse = {v: histories[v]["val_loss"][-1] for v in variants}
    best = min(val_mse, key=val_mse.get)
    test_noisy = noisy_images(data.test.pixels(), cfg["noise_std"], ctx.seed + 2)
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
    history = {"head": fit(classifier, *supervised, cfg["head"], ctx, "head (encoder frozen)", **CLASSIFICATION)}
    if not cfg["freeze_encoder"]:
        lower.trainable = True
        history["finetune"] = fit(classifier, *supervised, cfg["finetune"], ctx, "fine-tune all", **CLASSIFICATION)
    return Trained(recipes.serving_model(classifier, "classifier"), history)


def train_kmeans(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """The ``kmeans`` template (the mnist-kmeans recipe): a standardising dense autoencoder, then KMeans on its
    codes; ``n_clusters`` None means the number of classes of labelled data, else 10."""
    if cfg.get("n_clusters") is None:
        cfg = {**cfg, "n_clusters": len(data.class_names) if data.labelled else 10}
    return _train_clustered(data, cfg, ctx, recipes.kmeans_mnist, "standardized", standardized_target=True)


def train_conv_mnist(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    return _train_clustered(data, cfg, ctx, recipes.conv_mnist, "autoencoder", standardized_target=False)


def _model_name(data: Dataset, recipe: str) -> str:
    return f"{data.name}_{recipe}".replace("-", "_")


def train_conv_classifier(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """Pretrain a convolutional autoencoder, then fine-tune its encoder with a softmax head on labels.

    Fine-tuning sees augmented images (random rotation, shift, optionally flips), active only in training.
    """
    x, xv = data.train.pixels(), data.val.pixels()
    autoencoder = recipes.conv_autoencoder(
        _model_name(data, "conv_pretraining"),
        cfg["code_dim"],
        tuple(cfg["filters"]),
        code_activation="relu",
        batch_norm=cfg["batch_norm"],
    )
    pretrain = fit(autoencoder, x, x, (xv, xv), cfg["pretrain"], ctx, "pretrain (autoencoder)")
    classifier = recipes.conv_classifier(
        autoencoder.get_layer("encoder"),
        _model_name(data, "conv_classifier"),
        recipes.augmentation(**cfg["augment"]),
        cfg["dropout"],
        len(data.class_names),
    )
    finetune = fit(
        classifier,
        x,
        data.train.labels,
        (xv, data.val.labels),
        cfg["finetune"],
        ctx,
        "fine-tune (augmented)",
        **CLASSIFICATION,
    )
    return Trained(recipes.serving_model(classifier, "classifier"), {"pretrain": pretrain, "finetune": finetune})


def train_conv_autoencoder(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """Convolutional autoencoder with a small dense code (MSE, cosine-decayed Adam)."""
    x, xv = data.train.pixels(), data.val.pixels()
    model = recipes.conv_autoencoder(_model_name(data, "conv_small"), cfg["code_dim"], tuple(cfg["filters"]))
    history = fit(model, x, x, (xv, xv), cfg, ctx, "autoencoder")
    ctx.trained[f"{data.name}-conv-small"] = model  # the clustering model reuses its encoder
    return Trained(recipes.serving_model(model, "autoencoder"), {"autoencoder": history})


def train_conv_denoiser(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """The U-Net denoiser on fresh Gaussian noise every pass, input clipped to 0..1, target clean.

    With ``cfg["warm_start"]`` (``<name>/<version>`` under ``ctx.models_dir``) training starts
    from that exported denoiser, its added convolutions as identities
    (:func:`training.warm_start.transfer_weights`), instead of from random weights.
    """
    x, xv = data.train.pixels(), data.val.pixels()
    name = _model_name(data, "conv_denoiser")

    def build(c: dict) -> keras.Model:
        return recipes.conv_denoiser(
            name, tuple(c["filters"]), c["code_channels"], c["extra_convs"], c.get("extra_convs_28x28", 0)
        )

    model = build(cfg)
    notes = {}
    if cfg["warm_start"]:
        if ctx.models_dir is None:
            raise ValueError("warm_start needs the models directory (Context.models_dir)")
        source = warm_start.restore_exported(
            ctx.models_dir / cfg["warm_start"], lambda c: recipes.denoiser_serving(build(c))
        )
        notes["warm_start"] = {"from": cfg["warm_start"], "identity_layers": warm_start.transfer_weights(source, model)}
    batches = noisy_batches(x, cfg["noise_std"], cfg["batch_size"], ctx.seed)
    val = (noisy_images(xv, cfg["noise_std"], ctx.seed + 1), xv)
    # binary cross-entropy: with MSE the sigmoid output collapses to blank images and its gradient vanishes
    history = fit(model, batches, None, val, cfg, ctx, "denoiser", loss=cfg["loss"])
    return Trained(recipes.denoiser_serving(model), {"denoiser": history}, notes=notes)


def train_contrastive_encoder(data: Dataset, cfg: dict, ctx: Context) -> tuple[keras.Model, dict]:
    """SimCLR pretraining of the batch-normalised conv-small encoder on the training images.

    Views from :class:`training.layers.RandomViews` (``cfg["views"]``), the loss on a projection
    head's output (``cfg["projection"]``: hidden and output sizes), NT-Xent at ``temperature``.
    Labels are never used. Returns the encoder and the phase's history.
    """
    x, xv = data.train.pixels(), data.val.pixels()
    encoder = recipes.conv_encoder(cfg["code_dim"], tuple(cfg["filters"]), batch_norm=True)
    pretrainer = recipes.ContrastivePretrainer(
        encoder,
        recipes.projection_head(cfg["code_dim"], *cfg["projection"]),
        RandomViews(**cfg["views"], seed=ctx.seed),
        cfg["temperature"],
        name="contrastive_pretrainer",
    )
    history = fit(pretrainer, x, None, (xv, None), cfg, ctx, "contrastive pretraining", loss=None)
    return encoder, history


def mixture_log_joint(embedding: np.ndarray, mixture: dict[str, np.ndarray]) -> np.ndarray:
    """``log w_k + log N(e; μ_k, Σ_k)`` of each point and component, in float64: the mixture head's logits."""
    chol = mixture["precisions_cholesky"].astype(np.float64)
    projected = np.einsum("nd,kde->nke", embedding.astype(np.float64), chol)
    shift = np.einsum("kd,kde->ke", mixture["means"].astype(np.float64), chol)
    squared = np.sum((projected - shift[None]) ** 2, axis=-1)
    log_det = np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=-1)
    dim = embedding.shape[1]
    return np.log(mixture["weights"].astype(np.float64)) + log_det - 0.5 * (dim * np.log(2 * np.pi) + squared)


def confident_subset(log_joint: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Each component's most confident ``fraction`` of its points, by the gap between the two best logits.

    Returns the kept indices and every point's assigned component.
    """
    assigned = np.argmax(log_joint, axis=1)
    top_two = np.sort(log_joint, axis=1)[:, -2:]
    margin = top_two[:, 1] - top_two[:, 0]
    kept = []
    for k in np.unique(assigned):
        members = np.flatnonzero(assigned == k)
        n_keep = max(1, round(fraction * len(members)))
        kept.append(members[np.argsort(-margin[members])[:n_keep]])
    return np.sort(np.concatenate(kept)), assigned


def confident_self_training(
    encoder: keras.Model,
    embedder: keras.Model,
    x: np.ndarray,
    initial_log_joint: np.ndarray,
    cfg: dict,
    ctx: Context,
) -> dict[str, list[float]]:
    """Rounds of self-training on confident assignments only (DEC-DA style), labels never used.

    The embedding network's output is read as the logits of a softmax over the clusters. Each
    round keeps every cluster's most confident ``confident_fraction`` of the training images (by
    the margin between the two best logits), takes their cluster as a one-hot target and trains
    encoder and embedding network end to end (cross-entropy) on augmented copies of them for
    ``epochs_per_round`` epochs. The first round's assignments are ``initial_log_joint``'s (the
    UMAP embedding's mixture); every later round re-derives them from the network's own logits
    on the un-augmented images. The served mixture is then :func:`softmax_mixture`, whose
    posterior is the softmax of these logits.
    """
    augment = recipes.augmentation(**cfg["augment"])
    images = keras.Input(recipes.IMAGE_SHAPE, name="images")
    logits = embedder(encoder(augment(images)))
    probabilities = keras.layers.Softmax(name="cluster_probabilities")(logits)
    classifier = keras.Model(images, probabilities, name="confident_self_training")
    embed = keras.Sequential([encoder, embedder], name="embed")
    history: dict[str, list[float]] = {"loss": [], "kept": [], "changed_assignments": []}
    log_joint, previous = initial_log_joint, None
    epochs = ctx.epochs(cfg["epochs_per_round"])
    print(
        f"  confident self-training: {cfg['rounds']} rounds of {epochs} epochs on the most confident "
        f"{cfg['confident_fraction']:.0%} per cluster, {cfg['optimizer']} lr {cfg['lr']}",
        flush=True,
    )
    for round_ in range(cfg["rounds"]):
        start = time.perf_counter()
        kept, assigned = confident_subset(log_joint, cfg["confident_fraction"])
        changed = float(np.mean(assigned != previous)) if previous is not None else 0.0
        targets = np.eye(log_joint.shape[1], dtype=np.float32)[assigned[kept]]
        steps = math.ceil(len(kept) / cfg["batch_size"])
        lr = keras.optimizers.schedules.CosineDecay(cfg["lr"], decay_steps=epochs * steps)
        classifier.compile(optimizer=optimizer(cfg["optimizer"], lr), loss="categorical_crossentropy")
        fitted = classifier.fit(
            x[kept], targets, batch_size=cfg["batch_size"], epochs=epochs, shuffle=True, verbose=ctx.fit_verbosity
        )
        history["loss"].append(float(fitted.history["loss"][-1]))
        history["kept"].append(float(len(kept)))
        history["changed_assignments"].append(changed)
        previous = assigned
        log_joint = embed.predict(x, verbose=0, batch_size=1000)
        print(
            f"  round {round_ + 1}: {len(kept)} images kept, {changed:.2%} assignments changed since the "
            f"last round, {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    return history


def softmax_mixture(n_clusters: int) -> dict[str, np.ndarray]:
    """The Gaussian mixture whose posterior is the softmax of its input: it reads the embedding as logits.

    Unit covariances, equal weights, component ``k`` centred on the ``k``-th one-hot vector:
    ``log N(e; e_k, I) = e_k - (|e|² + 1 + d log 2π) / 2``, so the posterior is ``softmax(e)``
    and the most likely component is the largest logit, exactly (the self-trained network's cluster).
    """
    eye = np.eye(n_clusters, dtype=np.float32)
    return {
        "means": eye,
        "precisions_cholesky": np.repeat(eye[None], n_clusters, axis=0),
        "weights": np.full(n_clusters, 1.0 / n_clusters, np.float32),
    }


def train_umap_gmm(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """Encoder codes, UMAP of the training codes, a full-covariance Gaussian mixture on it.

    The encoder is the conv-small autoencoder's, or with ``cfg["contrastive"]`` one pretrained
    contrastively (:func:`train_contrastive_encoder`).

    A small network then learns to map codes to the UMAP embedding (parametric UMAP), so new
    images go through one graph: encoder, embedding network, the mixture's posterior. It is
    trained on the embedding (MSE) and on the mixture's posterior of each training image
    (cross-entropy through the fixed mixture head), then fine-tuned end to end with the encoder
    on augmented images (self-training on the mixture's own assignments). With
    ``confident_self_training`` in the config, encoder and network are instead trained end to end
    to predict the mixture's assignments (each component's most confident share of them, or all),
    the network's output read as logits, and the served mixture becomes :func:`softmax_mixture`;
    the parametric and self-training phases are skipped where their epochs are 0. Labels are
    used only to name each component's majority class (``label_hint``) and to report.
    """
    import umap  # the training extra; only this recipe needs it

    history = {}
    if "contrastive" in cfg:
        encoder, history["contrastive"] = train_contrastive_encoder(data, cfg["contrastive"], ctx)
    else:
        key = f"{data.name}-conv-small"
        if key not in ctx.trained:
            print(f"  pretraining: the {key} autoencoder", flush=True)
            train_conv_autoencoder(data, cfg["autoencoder"], ctx)
        encoder = ctx.trained[key].get_layer("encoder")
    x, xv = data.train.pixels(), data.val.pixels()
    codes = encoder.predict(x, verbose=0, batch_size=1000)
    codes_val = encoder.predict(xv, verbose=0, batch_size=1000)

    start = time.perf_counter()
    reducer = umap.UMAP(
        n_components=cfg["embedding_dim"],
        n_neighbors=cfg["n_neighbors"],
        min_dist=cfg["min_dist"],
        random_state=ctx.seed,
    )
    embedding = reducer.fit_transform(codes).astype(np.float32)
    embedding_val = reducer.transform(codes_val).astype(np.float32)
    print(f"  UMAP to {cfg['embedding_dim']}-d: {time.perf_counter() - start:.1f} s", flush=True)

    start = time.perf_counter()
    gmm = GaussianMixture(
        cfg["n_clusters"], covariance_type="full", n_init=cfg["gmm_n_init"], random_state=ctx.seed
    ).fit(embedding)
    print(f"  Gaussian mixture: {time.perf_counter() - start:.1f} s", flush=True)
    mixture = {
        "means": gmm.means_.astype(np.float32),
        "precisions_cholesky": gmm.precisions_cholesky_.astype(np.float32),
        "weights": gmm.weights_.astype(np.float32),
    }
    targets = {"embedding": embedding, "cluster_probabilities": gmm.predict_proba(embedding).astype(np.float32)}
    targets_val = {
        "embedding": embedding_val,
        "cluster_probabilities": gmm.predict_proba(embedding_val).astype(np.float32),
    }
    losses = {"embedding": "mse", "cluster_probabilities": "categorical_crossentropy"}

    embedder = recipes.embedding_network(codes.shape[1], cfg["embedding_dim"], cfg["hidden"])
    on_codes = recipes.mixture_trainer(embedder, mixture, keras.Input((codes.shape[1],), name="codes"))
    if cfg["parametric"]["epochs"]:
        history["parametric"] = fit(
            on_codes, codes, targets, (codes_val, targets_val), cfg["parametric"], ctx, "parametric map", loss=losses
        )
    if cfg["self_training"]["epochs"]:
        augment = recipes.augmentation(**cfg["self_training"]["augment"])
        images = keras.Input(recipes.IMAGE_SHAPE, name="images")
        end_to_end = recipes.mixture_trainer(keras.Sequential([augment, encoder, embedder]), mixture, images)
        history["self_training"] = fit(
            end_to_end,
            x,
            targets,
            (xv, targets_val),
            cfg["self_training"],
            ctx,
            "self-training (augmented)",
            loss=losses,
        )

    assigned = gmm.predict(embedding)
    notes = {"umap_gmm_train_cluster_acc": cluster_accuracy(data.train.labels, assigned)}
    if cfg.get("confident_self_training"):
        confident = cfg["confident_self_training"]
        history["confident_self_training"] = confident_self_training(
            encoder, embedder, x, mixture_log_joint(embedding, mixture), confident, ctx
        )
        # the network's last layer now gives logits: the served mixture is their softmax
        mixture = softmax_mixture(cfg["n_clusters"])

    serving = recipes.gmm_serving(encoder, embedder, **mixture, name=_model_name(data, "umap_gmm"))
    served = serving.predict(x, verbose=0, batch_size=1000)["cluster"]
    hints = majority_labels(data.train.labels, served, cfg["n_clusters"])
    notes["served_train_cluster_acc"] = cluster_accuracy(data.train.labels, served)
    notes["served_agreement_with_umap_gmm_train"] = float(np.mean(served == assigned))
    return Trained(serving, history, label_hints=hints, mixture=mixture, notes=notes)


STACKED_FASHION = {"optimizer": "sgd", "lr": 1.5, "batch_size": 32, "epochs": 20}


def scan_losses(logits_i: tf.Tensor, logits_j: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """SCAN's two terms for neighbours' logits: disagreement (mean ``-log p_i·p_j``), the mean assignment's entropy."""
    p_i, p_j = tf.nn.softmax(logits_i), tf.nn.softmax(logits_j)
    consistency = -tf.reduce_mean(tf.math.log(tf.reduce_sum(p_i * p_j, axis=1) + 1e-7))
    mean = tf.reduce_mean(p_i, axis=0)
    return consistency, -tf.reduce_sum(mean * tf.math.log(mean + 1e-7))


def scan_objective(logits: np.ndarray, neighbours: np.ndarray, entropy_weight: float) -> dict[str, float]:
    """:func:`scan_losses` over every image and each of its neighbours, not a batch: disagreement, entropy, total."""
    k, logits = neighbours.shape[1], logits.astype(np.float64)  # the choice between heads can hang on 1e-3
    consistency, entropy = scan_losses(np.repeat(logits, k, axis=0), logits[neighbours.ravel()])
    disagreement, entropy = float(consistency), float(entropy)
    return {"disagreement": disagreement, "entropy": entropy, "loss": disagreement - entropy_weight * entropy}


def nearest_neighbours(codes: np.ndarray, k: int) -> np.ndarray:
    """Each code's ``k`` nearest other codes (indices, nearest first), Euclidean on standardised codes.

    Every column is standardised on its own, so codes from several encoders joined side by side
    weigh by their number of dimensions, not by their scales.
    """
    from sklearn.neighbors import NearestNeighbors

    standardized = (codes - codes.mean(axis=0)) / codes.std(axis=0)
    found = NearestNeighbors(n_neighbors=k + 1).fit(standardized).kneighbors(standardized, return_distance=False)
    return found[:, 1:]


def fit_scan(
    network: keras.Model,
    inputs: np.ndarray,
    neighbours: np.ndarray,
    phase: dict,
    entropy_weight: float,
    epochs: int,
    seed: int,
) -> list[float]:
    """Train ``network`` (inputs to one logits tensor per head) with SCAN's loss, averaged over its heads.

    Each step takes a batch of inputs (codes or images) and one random neighbour of each; both go
    through the network in training mode (so its augmentation, if any, is active). Returns each
    epoch's mean loss.
    """
    rng = np.random.default_rng(seed)
    opt = optimizer(phase["optimizer"], phase["lr"])

    @tf.function
    def step(anchors, partners):
        with tf.GradientTape() as tape:
            pairs = zip(network(anchors, training=True), network(partners, training=True), strict=True)
            terms = [scan_losses(a, b) for a, b in pairs]
            loss = tf.add_n([consistency - entropy_weight * entropy for consistency, entropy in terms]) / len(terms)
        gradients = tape.gradient(loss, network.trainable_variables)
        opt.apply_gradients(zip(gradients, network.trainable_variables, strict=True))
        return loss

    k, batch, losses = neighbours.shape[1], phase["batch_size"], []
    for epoch in range(epochs):
        start = time.perf_counter()
        order, batch_losses = rng.permutation(len(inputs)), []
        for i in range(0, len(inputs), batch):
            anchors = order[i : i + batch]
            partners = neighbours[anchors, rng.integers(0, k, len(anchors))]
            batch_losses.append(float(step(inputs[anchors], inputs[partners])))
        losses.append(float(np.mean(batch_losses)))
        print(f"    epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}, {time.perf_counter() - start:.1f} s", flush=True)
    return losses


def train_scan(data: Dataset, cfg: dict, ctx: Context) -> Trained:
    """SCAN's clustering step (Van Gansbeke et al. 2020) from an exported contrastive encoder.

    The encoder starts as ``cfg["encoder_from"]``'s (``<name>/<version>`` under
    ``ctx.models_dir``, a ``umap-gmm`` export with a contrastive encoder). Each training image's
    ``n_neighbors`` nearest training images are mined once, by its codes joined to the ``codes``
    output of each export named in ``cfg["neighbour_codes_from"]`` (if any: an autoencoder's
    codes, trained to redraw the image where the contrastive ones ignore what views change).
    ``heads`` heads (from different initial weights) then learn to give an image and a random one
    of its neighbours the same cluster (``-log p_i·p_j``) while keeping the mean assignment spread
    over the clusters (minus ``entropy_weight`` times its entropy): first on the frozen codes
    (``heads_only``), then all together with the encoder, end to end on augmented images
    (``end_to_end``). As in SCAN, the head with the lowest loss over every image and neighbour is
    served, its logits read by :func:`softmax_mixture`. Labels are used only to name the clusters
    and to report.
    """
    if ctx.models_dir is None:
        raise ValueError("encoder_from needs the models directory (Context.models_dir)")
    source = warm_start.restore_exported(ctx.models_dir / cfg["encoder_from"], _umap_gmm_serving)
    encoder = source.get_layer("encoder")
    x = data.train.pixels()
    codes = encoder.predict(x, verbose=0, batch_size=1000)
    start = time.perf_counter()
    joined = cfg.get("neighbour_codes_from", [])
    mined = np.hstack([codes, *(load_saved_model(ctx.models_dir / source)(x)["codes"] for source in joined)])
    neighbours = nearest_neighbours(mined, min(cfg["n_neighbors"], len(codes) - 1))
    purity = float(np.mean(data.train.labels[neighbours] == data.train.labels[:, None]))
    elapsed = time.perf_counter() - start
    by = "".join(f" and {source}'s" for source in joined)
    print(
        f"  {neighbours.shape[1]} nearest neighbours of each training image by its codes{by}: {elapsed:.1f} s "
        f"({purity:.1%} of them of its class, for the record only)",
        flush=True,
    )

    keras.utils.set_random_seed(ctx.seed)
    code_dim, n_clusters = codes.shape[1], cfg["n_clusters"]
    heads = [
        recipes.scan_head(code_dim, cfg["hidden"], n_clusters, codes.mean(0), codes.var(0), name=f"scan_head_{h + 1}")
        for h in range(cfg["heads"])
    ]
    on_codes = keras.Input((code_dim,), name="codes")
    images = keras.Input(recipes.IMAGE_SHAPE, name="images")
    augmented_codes = encoder(recipes.augmentation(**cfg["end_to_end"]["augment"])(images))
    networks = {
        "heads_only": keras.Model(on_codes, [head(on_codes) for head in heads], name="scan_heads"),
        "end_to_end": keras.Model(images, [head(augmented_codes) for head in heads], name="scan_end_to_end"),
    }
    history = {}
    for phase, inputs in (("heads_only", codes), ("end_to_end", x)):
        settings = cfg[phase]
        epochs = ctx.epochs(settings["epochs"])
        print(
            f"  SCAN {phase.replace('_', ' ')}: {len(heads)} heads, {epochs} epochs, {settings['optimizer']} "
            f"lr {settings['lr']}, batch {settings['batch_size']}, entropy weight {cfg['entropy_weight']}",
            flush=True,
        )
        losses = fit_scan(networks[phase], inputs, neighbours, settings, cfg["entropy_weight"], epochs, ctx.seed)
        history[phase] = {"loss": losses}

    codes = encoder.predict(x, verbose=0, batch_size=1000)
    per_head, assigned = {"disagreement": [], "entropy": [], "loss": [], "train_cluster_acc": []}, []
    for head in heads:
        logits = head.predict(codes, verbose=0, batch_size=1000)
        for key, value in scan_objective(logits, neighbours, cfg["entropy_weight"]).items():
            per_head[key].append(value)
        assigned.append(np.argmax(logits, axis=1))
        per_head["train_cluster_acc"].append(cluster_accuracy(data.train.labels, assigned[-1]))
    best = int(np.argmin(per_head["loss"]))
    for h in range(len(heads)):
        print(
            f"  head {h + 1}: loss {per_head['loss'][h]:.4f} (disagreement {per_head['disagreement'][h]:.4f}, "
            f"entropy {per_head['entropy'][h]:.4f}){'  <- served' if h == best else ''}",
            flush=True,
        )
    mixture = softmax_mixture(n_clusters)
    serving = recipes.gmm_serving(encoder, heads[best], **mixture, name=_model_name(data, "scan"))
    served = assigned[best]  # the served cluster is the largest logit (softmax_mixture)
    notes = {
        "heads": per_head,
        "served_head": best + 1,
        "served_train_cluster_acc": cluster_accuracy(data.train.labels, served),
        "neighbour_purity": purity,
    }
    hints = majority_labels(data.train.labels, served, n_clusters)
    # both phases train every head; no epoch is picked, the last weights are kept
    return Trained(serving, history, label_hints=hints, mixture=mixture, notes=notes)


def _umap_gmm_serving(cfg: dict) -> keras.Model:
    """The served graph of a ``umap-gmm`` export with a contrastive encoder, rebuilt from its config."""
    c = cfg["contrastive"]
    encoder = recipes.conv_encoder(c["code_dim"], tuple(c["filters"]), batch_norm=True)
    embedder = recipes.embedding_network(c["code_dim"], cfg["embedding_dim"], cfg["hidden"])
    return recipes.gmm_serving(encoder, embedder, **softmax_mixture(cfg["n_clusters"]), name="umap_gmm")
