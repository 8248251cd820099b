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

    def holds(self, metrics: dict[str, dict[str, float]]) -> bool:
        got = metrics[self.split][self.metric]
        return got >= self.value if self.higher_is_better else got <= self.value

    def describe(self) -> str:
        return f"{self.split} {self.metric} {'≥' if self.higher_is_better else '≤'} {self.value:g}"


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

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.recipe}"


SPECS: tuple[Spec, ...] = (
    Spec(
        "mnist",
        "stacked",
        ("encode", "reconstruct"),
        "dense 784-256-128-256-784, sigmoid everywhere; MSE, RMSProp",
        "MSE about 0.045",
        (Floor("mse", 0.045, higher_is_better=False),),
        p.train_stacked_mnist,
        {"optimizer": "rmsprop", "lr": 0.02, "batch_size": 256, "epochs": 50},
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
        (Floor("cluster_acc", 0.53, source="RECIPES.md gives no number: KMeans on raw pixels, ACC 0.53"),),
        p.train_kmeans_mnist,
        {"optimizer": "adam", "lr": 0.01, "batch_size": 256, "epochs": 20, "n_clusters": 10},
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

BY_NAME = {spec.name: spec for spec in SPECS}


def get(name: str) -> Spec:
    """The spec of a model name, or a ``KeyError`` listing the known names."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(BY_NAME)}") from None
