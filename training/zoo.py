"""The model zoo: every recipe the service serves, its training config and its floor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from training import procedures as p


@dataclass(frozen=True)
class Floor:
    """A metric the committed model must reach: ``metric`` on ``split``, at least (or at most) ``value``."""

    metric: str
    value: float
    higher_is_better: bool = True
    split: str = "test"
    source: str = "RECIPES.md reference figure"
    goal: float | None = None  # the figure asked for, where CI holds a lower one until it is reached
    published: str | None = None  # the field's figures for this metric, where the spec's reference is another's

    def holds(self, metrics: dict[str, dict[str, float]], value: float | None = None) -> bool:
        got, value = metrics[self.split][self.metric], self.value if value is None else value
        return got >= value if self.higher_is_better else got <= value

    def meets_goal(self, metrics: dict[str, dict[str, float]]) -> bool:
        return self.holds(metrics, self.goal)

    def describe(self, value: float | None = None) -> str:
        value = self.value if value is None else value
        return f"{self.split} {self.metric} {'≥' if self.higher_is_better else '≤'} {value:g}"

    def describe_goal(self) -> str:
        return self.describe(self.goal)


@dataclass(frozen=True)
class Spec:
    """One servable model: which recipe on which dataset, how it is trained, what it must reach."""

    dataset: str
    recipe: str
    endpoints: tuple[str, ...]
    architecture: str
    reference: str
    floors: tuple[Floor, ...]
    train: Callable
    config: dict
    version: int = 1  # the version ``train`` exports by default: the committed one this config makes
    template: str | None = None  # the template (training/templates.py) this recipe applies, if any
    model_name: str | None = None  # a template run's own name; a recipe's is <dataset>-<recipe>

    @property
    def name(self) -> str:
        return self.model_name or f"{self.dataset}-{self.recipe}"

    @property
    def noise_std(self) -> float:
        """The noise every denoising figure is measured at: the recipe's task, whatever a run's ``--set``."""
        return self.config.get("noise_std", 0.6)


SPECS: tuple[Spec, ...] = (
    Spec(
        "mnist",
        "stacked",
        ("encode", "reconstruct"),
        "dense 784-256-128-256-784, sigmoid everywhere; MSE, RMSProp",
        "MSE about 0.045",
        (Floor("mse", 0.045, higher_is_better=False),),
        p.train_stacked,
        {"optimizer": "rmsprop", "lr": 0.02, "batch_size": 256, "epochs": 50},
        template="stacked",
    ),
    Spec(
        "mnist",
        "pretrained-classifier",
        ("encode", "classify"),
        "encoder 784-128-64 sigmoid pretrained as an autoencoder (MSE, RMSProp), "
        "then softmax on the 64-d code fine-tuned with the encoder (cross-entropy, SGD)",
        "test accuracy 96.16 %",
        (Floor("accuracy", 0.9616),),
        p.train_pretrained_classifier_mnist,
        {
            "pretrain": {"optimizer": "rmsprop", "lr": 0.02, "batch_size": 256, "epochs": 20},
            "finetune": {"optimizer": "sgd", "lr": 0.5, "batch_size": 128, "epochs": 20},
        },
    ),
    Spec(
        "mnist",
        "denoising",
        ("encode", "denoise"),
        "Gaussian noise std 0.6 on the input, clipped to 0..1, target the clean image; "
        "dense 784-256-784 and 784-256-128-256-784 sigmoid, the better served; MSE, Adam",
        "MSE 0.030 (shallow), 0.031 (deep)",
        (Floor("mse", 0.030, higher_is_better=False), Floor("psnr_db", 15.2, source="issue 2: PSNR ≥ 15.2 dB")),
        p.train_denoising_mnist,
        {"optimizer": "adam", "lr": 0.01, "batch_size": 100, "epochs": 20, "noise_std": 0.6},
    ),
    Spec(
        "fashion-mnist",
        "stacked",
        ("encode", "reconstruct"),
        "dense 784-100-30 / 30-100-784, selu, sigmoid out; binary cross-entropy, SGD",
        "validation rounded accuracy about 0.93-0.94",
        (Floor("rounded_accuracy", 0.93), Floor("rounded_accuracy", 0.93, split="val")),
        p.train_stacked_fashion,
        p.STACKED_FASHION,
    ),
    Spec(
        "fashion-mnist",
        "tied",
        ("encode", "reconstruct"),
        "as stacked, each decoder layer the transpose of its mirror encoder layer's kernel, own bias",
        "validation rounded accuracy about 0.93 after 10 epochs",
        (Floor("rounded_accuracy", 0.93), Floor("rounded_accuracy", 0.93, split="val")),
        p.train_tied_fashion,
        {"optimizer": "sgd", "lr": 1.5, "batch_size": 32, "epochs": 10},
    ),
    Spec(
        "fashion-mnist",
        "layerwise",
        ("encode", "reconstruct"),
        "greedy: 784-100-784 (BCE, SGD 1.5), then 100-30-100 on its codes (MSE, SGD 0.05), "
        "stacked as 784-100-30-100-784 and fine-tuned (BCE, SGD 0.1)",
        "validation rounded accuracy about 0.946 for phase 1",
        (Floor("rounded_accuracy", 0.93), Floor("rounded_accuracy", 0.93, split="val")),
        p.train_layerwise_fashion,
        {
            "phase1": {"optimizer": "sgd", "lr": 1.5, "batch_size": 32, "epochs": 10},
            "phase2": {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "epochs": 10},
            "finetune": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "epochs": 5},
        },
    ),
    Spec(
        "fashion-mnist",
        "pretrained-classifier",
        ("encode", "classify"),
        "the fashion-mnist-stacked encoder's lower layer (784-100 selu) plus softmax; "
        "head trained over the frozen encoder, then all fine-tuned (frozen throughout when labels are few)",
        "none given (small CNNs 92.5-93.4 %)",
        (Floor("accuracy", 0.85, source="project floor: RECIPES.md gives no figure"),),
        p.train_pretrained_classifier_fashion,
        {
            "reuse_layers": 1,
            "freeze_encoder": False,
            "labeled_examples": None,
            "head": {"optimizer": "adam", "lr": 0.001, "batch_size": 64, "epochs": 3},
            "finetune": {"optimizer": "adam", "lr": 0.0005, "batch_size": 64, "epochs": 12},
        },
    ),
    Spec(
        "mnist",
        "kmeans",
        ("encode", "reconstruct", "cluster"),
        "per-image standardisation in the graph, dense 784-256-100 relu / 100-256-784 relu, linear out; "
        "MSE, Adam; KMeans with 10 clusters on the 100-d code",
        '"clustering is still poor" (no number)',
        (Floor("cluster_acc", 0.60, source="issue 2: KMeans-on-code clustering ACC ≥ 0.60"),),
        p.train_kmeans,
        # RECIPES.md fixes the layers, the loss, Adam and its rate; the batch size is ours. 128 of 64,
        # 128, 256 and 512 (`train mnist-kmeans --set batch_size=N` prints each): the training partition's
        # silhouette, which needs no labels, is highest there (0.193 against 0.185, 0.164 and 0.184).
        {"optimizer": "adam", "lr": 0.01, "batch_size": 128, "epochs": 20, "n_clusters": 10, "kmeans_n_init": 50},
        template="kmeans",
    ),
    Spec(
        "mnist",
        "conv",
        ("encode", "reconstruct", "cluster"),
        "Conv2D 10@5x5 relu, MaxPool 5x5 stride 1, Dense 196 (the 14x14 latent), "
        "Conv2DTranspose 10@4x4 stride 2 relu, Conv2D 1@4x4 linear; MSE, Adam; KMeans 10 on the code",
        "none given; its latent looks like a small copy of the digit",
        (
            Floor("mse", 0.01, higher_is_better=False, source="project floor: RECIPES.md gives no figure"),
            Floor("cluster_acc", 0.53, source="RECIPES.md gives no number: KMeans on raw pixels, ACC 0.53"),
        ),
        p.train_conv_mnist,
        {"optimizer": "adam", "lr": 0.005, "batch_size": 128, "epochs": 10, "n_clusters": 10},
    ),
)

ISSUE_7 = "issue 7 goal"
# Where a goal of issue 7 is not reached yet, CI holds the committed model to the figure it reached instead
# (rounded down), so that a later version cannot fall back unnoticed; the report's table gives both.
NOT_YET = "issue 7 goal not reached yet: CI holds the figure reached"


def _conv_classifier_config(
    filters: list[int],
    code_dim: int,
    epochs: int,
    rotation_degrees: float,
    shift: float,
    flip: bool,
    pretrain_epochs: int = 3,
) -> dict:
    return {
        "filters": filters,
        "batch_norm": True,
        "code_dim": code_dim,
        "dropout": 0.3,
        "augment": {"rotation_degrees": rotation_degrees, "shift": shift, "flip": flip},
        "pretrain": {"optimizer": "adam", "lr": 0.001, "batch_size": 128, "epochs": pretrain_epochs},
        "finetune": {"optimizer": "adam", "lr": 0.002, "schedule": "cosine", "batch_size": 128, "epochs": epochs},
    }


SPECS += (
    Spec(
        "mnist",
        "conv-classifier",
        ("encode", "classify"),
        "conv encoder 3x3 32, 32/2, 64, 64/2 (batch norm, relu), dense 128-d relu code, pretrained as a "
        "convolutional autoencoder (MSE, Adam), then softmax on the code fine-tuned with the encoder on images "
        "randomly rotated (±10°) and shifted (±10 %) in training only, dropout 0.3 (cross-entropy, Adam, "
        "cosine decay)",
        "small CNNs 99.2-99.4 %",
        (Floor("accuracy", 0.995, source=ISSUE_7),),
        p.train_conv_classifier,
        _conv_classifier_config([32, 64], 128, 15, rotation_degrees=10.0, shift=0.1, flip=False),
        template="conv-classifier",
    ),
    Spec(
        "fashion-mnist",
        "conv-classifier",
        ("encode", "classify"),
        "conv encoder 3x3 48, 48/2, 96, 96/2 (batch norm, relu), dense 256-d relu code, pretrained as a "
        "convolutional autoencoder (MSE, Adam), then softmax on the code fine-tuned with the encoder on images "
        "randomly flipped left-right and shifted (±6 %) in training only, dropout 0.3 "
        "(cross-entropy, Adam, cosine decay)",
        "small CNNs 92.5-93.4 %",
        (Floor("accuracy", 0.935, source=ISSUE_7),),
        p.train_conv_classifier,
        _conv_classifier_config([48, 96], 256, 30, rotation_degrees=0.0, shift=0.06, flip=True, pretrain_epochs=2),
        template="conv-classifier",
    ),
)


def _conv_small_config(filters: list[int], epochs: int) -> dict:
    return {
        "filters": filters,
        "code_dim": 32,
        "optimizer": "adam",
        "lr": 0.002,
        "schedule": "cosine",
        "batch_size": 128,
        "epochs": epochs,
    }


CONFIDENT_SELF_TRAINING = {
    "optimizer": "adam",
    "lr": 0.0005,
    "batch_size": 128,
    "rounds": 1,
    "epochs_per_round": 4,
    "confident_fraction": 1.0,
}


def _umap_gmm_config(pretraining: dict[str, dict], n_neighbors: int, augment: dict) -> dict:
    # ``pretraining`` is {"autoencoder": config} or {"contrastive": config}: how the encoder is made.
    # The parametric-UMAP and mixture-head self-training phases are off (0 epochs) since confident
    # self-training replaced them; `--set parametric.epochs=30` and the like still run them.
    return {
        **pretraining,
        "embedding_dim": 10,
        "n_neighbors": n_neighbors,
        "min_dist": 0.0,
        "n_clusters": 10,
        "gmm_n_init": 3,
        "hidden": 256,
        "parametric": {
            "optimizer": "adam",
            "lr": 0.001,
            "schedule": "cosine",
            "batch_size": 256,
            "epochs": 0,
        },
        "self_training": {
            "augment": augment,
            "optimizer": "adam",
            "lr": 0.0005,
            "schedule": "cosine",
            "batch_size": 128,
            "epochs": 0,
        },
        "confident_self_training": {"augment": augment, **CONFIDENT_SELF_TRAINING},
    }


CONV_SMALL_MNIST = _conv_small_config([32, 64], 15)
CONV_SMALL_FASHION = _conv_small_config([32, 64], 15)
CONTRASTIVE_FASHION = {
    "code_dim": 32,
    "filters": [32, 64],
    "projection": [128, 64],
    "temperature": 0.2,
    "views": {"min_scale": 0.45, "flip": True, "jitter": 0.4, "erase_probability": 0.3, "erase_size": 10},
    "optimizer": "adam",
    "lr": 0.001,
    "schedule": "cosine",
    "batch_size": 512,
    "epochs": 28,
}
CONV_SMALL_ARCHITECTURE = (
    "conv encoder 3x3 {0}, {0}/2, {1}, {1}/2 relu, dense 32-d linear code; decoder dense to 7x7x{1}, "
    "3x3 transposed convolutions {0}/2, {0}/2 relu, 3x3 sigmoid convolution; MSE, Adam, cosine decay"
)
SELF_TRAINED_UMAP_GMM_ARCHITECTURE = (
    "{codes}; UMAP of the training codes to 10-d (min_dist 0); a full-covariance "
    "Gaussian mixture of 10 components on it (N2D); then self-training (DEC-DA style): a dense 32-256-256-10 network "
    "on the encoder, trained end to end with it on augmented training images ({augment}) to predict each image's "
    "mixture component, its 10 outputs read as logits (one-hot targets for {targets}; cross-entropy, Adam, cosine "
    "decay); the served graph is encoder, network and the mixture whose posterior is the softmax of those logits "
    "(unit covariances centred on the one-hot vectors, equal weights)"
).replace(
    "{targets}",
    "every training image"
    if CONFIDENT_SELF_TRAINING["confident_fraction"] == 1.0
    else f"the {100 * CONFIDENT_SELF_TRAINING['confident_fraction']:.0f} % of each component's images with the "
    "widest margin between its two most likely components",
)
_VIEWS = CONTRASTIVE_FASHION["views"]
CONTRASTIVE_ENCODER_ARCHITECTURE = (
    "a conv encoder (3x3 convolutions {0}, {0}/2, {1}, {1}/2, batch normalisation, relu; dense {code}-d linear "
    "code) pretrained contrastively, labels unseen (SimCLR: two random views of each training image, a crop of "
    "{crop:.0f}-100 % of its area resized to 28x28, left-right flip, contrast and brightness jitter {jitter:g}, a "
    "{erase}-pixel square erased in {erased:.0f} % of them; a dense {2}-{3} projection head; NT-Xent at temperature "
    "{temperature:g}; Adam, cosine decay); its {code}-d codes"
).format(
    *CONTRASTIVE_FASHION["filters"],
    *CONTRASTIVE_FASHION["projection"],
    code=CONTRASTIVE_FASHION["code_dim"],
    crop=100 * _VIEWS["min_scale"],
    jitter=_VIEWS["jitter"],
    erase=_VIEWS["erase_size"],
    erased=100 * _VIEWS["erase_probability"],
    temperature=CONTRASTIVE_FASHION["temperature"],
)
SCAN_FASHION = {
    "encoder_from": "fashion-mnist-umap-gmm/2",
    "neighbour_codes_from": ["fashion-mnist-conv-small/1"],
    "n_clusters": 10,
    "n_neighbors": 20,
    "entropy_weight": 5.0,
    "hidden": 256,
    "heads": 10,
    "heads_only": {"optimizer": "adam", "lr": 0.001, "batch_size": 256, "epochs": 10},
    "end_to_end": {
        "optimizer": "adam",
        "lr": 0.0001,
        "batch_size": 256,
        "epochs": 8,
        "augment": {"rotation_degrees": 0.0, "shift": 0.06, "flip": True},
    },
}
SCAN_ARCHITECTURE = (
    "the encoder of fashion-mnist-umap-gmm version 2 (contrastively pretrained, then self-trained) and its 32-d "
    "codes; SCAN's clustering step: each training image's {n_neighbors} nearest training images by these codes "
    "joined to the codes of the autoencoder {joined} (standardised, Euclidean), and {heads} heads (codes "
    "standardised, dense {hidden} relu, {n_clusters} logits) trained to give an image and a random one of its "
    "neighbours the same cluster (-log p_i·p_j) while keeping the mean assignment spread (minus "
    "{entropy_weight:g} times its entropy): {epochs} epochs on the frozen codes (Adam {lr:g}), then "
    "{e2e[epochs]} epochs all together with the encoder, end to end on augmented images (left-right flips, "
    "±{shift:.0f} % shift; Adam {e2e[lr]:g}); as in SCAN, the head with the lowest loss over every image and "
    "neighbour is served, the softmax of its logits as the posterior"
)
SPECS += (
    Spec(
        "mnist",
        "conv-small",
        ("encode", "reconstruct"),
        CONV_SMALL_ARCHITECTURE.format(*CONV_SMALL_MNIST["filters"]),
        "PCA-32 test MSE 0.0168; PCA-64 0.0091",
        (
            Floor("mse", 0.008, higher_is_better=False, source=ISSUE_7),
            Floor(
                "ood_auroc",
                0.99,
                source=ISSUE_7 + ": Fashion-MNIST test vs MNIST test by reconstruction error",
                published="none of the serving systems offer it",
            ),
        ),
        p.train_conv_autoencoder,
        {**CONV_SMALL_MNIST, "ood_dataset": "fashion-mnist"},
        template="conv-small",
    ),
    Spec(
        "fashion-mnist",
        "conv-small",
        ("encode", "reconstruct"),
        CONV_SMALL_ARCHITECTURE.format(*CONV_SMALL_FASHION["filters"]),
        "PCA-32 test MSE 0.0151; PCA-64 0.0104",
        (Floor("mse", 0.009, higher_is_better=False, source=ISSUE_7),),
        p.train_conv_autoencoder,
        CONV_SMALL_FASHION,
        template="conv-small",
    ),
    Spec(
        "mnist",
        "conv-denoiser",
        ("encode", "denoise"),
        "Gaussian noise std 0.6 on the input, clipped to 0..1, target the clean image; small U-Net: "
        "3x3 convolutions 32 (28x28), 32/2, 64, 64, 64, 64 (14x14), 64/2, 64, 64, 64, 64 (7x7), 1x1 to a "
        "7x7x8 code; transposed convolutions back to 14x14 and 28x28, each concatenated with the encoder's "
        "features of that size and followed by 3x3 convolutions (four of 32 at 14x14, two of 16 at 28x28); "
        "binary cross-entropy, Adam, cosine decay. Version 3 starts from version 2 (one convolution fewer "
        "at each of those four stages), the added convolutions as identities, and trains 16 more epochs "
        "at lr 0.001; version 2 started likewise from version 1 (one fewer again at the encoder's 14x14 "
        "and 7x7 and the decoder's 14x14, 30 epochs at lr 0.002) and trained 20 epochs at lr 0.001",
        "noisy input 8.2 dB; PCA-32 projection 14.2 dB; recipe about 15 dB",
        (Floor("psnr_db", 20.0, source=ISSUE_7),),
        p.train_conv_denoiser,
        {
            "filters": [32, 64],
            "code_channels": 8,
            "extra_convs": 3,
            "extra_convs_28x28": 1,
            "warm_start": "mnist-conv-denoiser/2",
            "noise_std": 0.6,
            "loss": "binary_crossentropy",
            "optimizer": "adam",
            "lr": 0.001,
            "schedule": "cosine",
            "batch_size": 128,
            "epochs": 16,
        },
        version=3,
        template="conv-denoiser",
    ),
    Spec(
        "mnist",
        "umap-gmm",
        ("encode", "cluster"),
        SELF_TRAINED_UMAP_GMM_ARCHITECTURE.format(
            codes="the conv-small autoencoder's 32-d codes", augment="±10° rotation, ±10 % shift"
        ),
        "autoencoder + KMeans 0.88; N2D 0.979 on all 70k, 0.948 on test only; DEC-DA 0.985",
        (Floor("cluster_acc", 0.98, source=ISSUE_7),),
        p.train_umap_gmm,
        _umap_gmm_config(
            {"autoencoder": CONV_SMALL_MNIST}, 10, {"rotation_degrees": 10.0, "shift": 0.1, "flip": False}
        ),
    ),
    Spec(
        "fashion-mnist",
        "umap-gmm",
        ("encode", "cluster"),
        SELF_TRAINED_UMAP_GMM_ARCHITECTURE.format(
            codes=CONTRASTIVE_ENCODER_ARCHITECTURE, augment="left-right flips, ±6 % shift"
        ),
        "N2D 0.672; DEC 0.62",
        (Floor("cluster_acc", 0.65, source=NOT_YET, goal=0.70),),
        p.train_umap_gmm,
        _umap_gmm_config(
            {"contrastive": CONTRASTIVE_FASHION}, 10, {"rotation_degrees": 0.0, "shift": 0.06, "flip": True}
        ),
        version=2,
    ),
    Spec(
        "fashion-mnist",
        "scan",
        ("encode", "cluster"),
        SCAN_ARCHITECTURE.format(
            **SCAN_FASHION,
            **SCAN_FASHION["heads_only"],
            e2e=SCAN_FASHION["end_to_end"],
            shift=100 * SCAN_FASHION["end_to_end"]["augment"]["shift"],
            joined=", ".join(source.replace("/", " version ") for source in SCAN_FASHION["neighbour_codes_from"]),
        ),
        "N2D 0.672; DEC 0.62",
        (Floor("cluster_acc", 0.70, source=ISSUE_7),),
        p.train_scan,
        SCAN_FASHION,
        version=2,
    ),
)

BY_NAME = {spec.name: spec for spec in SPECS}


def get(name: str) -> Spec:
    """The spec of a model name, or a ``KeyError`` listing the known names."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(BY_NAME)}") from None
