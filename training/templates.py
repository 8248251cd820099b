"""Templates: the recipes that train on any data (``python -m training train TEMPLATE --data PATH --name NAME``).

Each template is one training procedure with default settings. The recipes of :mod:`training.zoo` whose
``template`` is set are that template applied to ``mnist`` or ``fashion-mnist``, with their own settings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from training import procedures as p
from training import zoo


@dataclass(frozen=True)
class Template:
    """A procedure that trains on any dataset: what it serves, its defaults, whether it needs labels."""

    name: str
    endpoints: tuple[str, ...]
    description: str
    train: object
    config: dict
    needs_labels: bool = False

    def recipes(self) -> list[str]:
        """The zoo's recipes that are this template applied to a named dataset."""
        return [s.name for s in zoo.SPECS if s.template == self.name]

    def spec(self, name: str, dataset: str, config: dict, version: int) -> zoo.Spec:
        """The :class:`zoo.Spec` of one run: this template, on ``dataset``, served as ``name``."""
        return zoo.Spec(
            dataset,
            self.name,
            self.endpoints,
            self.description,
            "none: a template run on your own data",
            (),
            self.train,
            config,
            version=version,
            template=self.name,
            model_name=name,
        )


TEMPLATES = {
    t.name: t
    for t in (
        Template(
            "stacked",
            ("encode", "reconstruct"),
            "dense autoencoder 784-sizes-...-784 (default 784-256-128-256-784), sigmoid; MSE, RMSProp",
            p.train_stacked,
            {
                "sizes": [256, 128],
                "activation": "sigmoid",
                "loss": "mse",
                "optimizer": "rmsprop",
                "lr": 0.02,
                "batch_size": 256,
                "epochs": 50,
            },
        ),
        Template(
            "conv-small",
            ("encode", "reconstruct"),
            zoo.CONV_SMALL_ARCHITECTURE.format(32, 64),
            p.train_conv_autoencoder,
            zoo._conv_small_config([32, 64], 15),
        ),
        Template(
            "conv-denoiser",
            ("encode", "denoise"),
            "Gaussian noise (std noise_std) on the input, clipped to 0..1, target the clean image; small U-Net "
            "with skip connections at 28x28 and 14x14, a 7x7x8 code; binary cross-entropy, Adam, cosine decay",
            p.train_conv_denoiser,
            {
                "filters": [32, 64],
                "code_channels": 8,
                "extra_convs": 0,
                "extra_convs_28x28": 0,
                "warm_start": None,
                "noise_std": 0.3,
                "loss": "binary_crossentropy",
                "optimizer": "adam",
                "lr": 0.002,
                "schedule": "cosine",
                "batch_size": 128,
                "epochs": 15,
            },
        ),
        Template(
            "conv-classifier",
            ("encode", "classify"),
            "conv encoder 3x3 32, 32/2, 64, 64/2 relu, dense 128-d relu code, pretrained as a "
            "convolutional autoencoder, then a softmax over the classes fine-tuned with the encoder on images "
            "randomly shifted (±10 %) in training only, dropout 0.3",
            p.train_conv_classifier,
            # no batch normalisation: over the few steps of a small dataset its moving statistics lag behind
            {
                **zoo._conv_classifier_config(
                    [32, 64], 128, 20, rotation_degrees=0.0, shift=0.1, flip=False, pretrain_epochs=5
                ),
                "batch_norm": False,
            },
            needs_labels=True,
        ),
        Template(
            "kmeans",
            ("encode", "reconstruct", "cluster"),
            "per-image standardisation, dense 784-256-100 relu / 100-256-784 relu, linear out; MSE, Adam; "
            "KMeans on the 100-d code (clusters: the number of classes, else 10)",
            p.train_kmeans,
            {"optimizer": "adam", "lr": 0.01, "batch_size": 128, "epochs": 20, "n_clusters": None, "kmeans_n_init": 10},
        ),
    )
}
# ``--set`` names that stand for a template's own key.
ALIASES = {"kmeans": {"clusters": "n_clusters"}}


def get(name: str) -> Template:
    """A template by name, or a ``SystemExit`` listing them."""
    if name not in TEMPLATES:
        raise SystemExit(f"unknown template {name!r}; templates: {', '.join(TEMPLATES)} (`python -m training list`)")
    return TEMPLATES[name]


def default_config(template: Template) -> dict:
    """A fresh copy of the template's default settings."""
    return copy.deepcopy(template.config)
