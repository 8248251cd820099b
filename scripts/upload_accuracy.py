"""How well uploaded image files of Fashion-MNIST test images are classified, per preprocessing rule.

Each test image is made into image files as a client would send them, decoded by the service's
own decoder (:func:`app.imaging.decode_image`), prepared by each rule (and the product rule's
variants) and classified by the committed Fashion-MNIST classifiers (``model.tflite``, as served).
The same images sent as arrays are the reference. Forms:

- ``dataset``: the dataset's own look (light garment on black) scaled up to 112x112, PNG.
- ``page``: the garment dark on a white page (negated), scaled up 4-8x, placed off-centre on a
  400x320 page, JPEG quality 85.
- ``photo``: the same on light grey paper (225 of 255) with noise (standard deviation 12), as a
  phone photo of a printout; JPEG quality 85.

Run with ``AESERVE_DATA_DIR=... python scripts/upload_accuracy.py [--count 2000]``; prints the
accuracy (%) of each rule on each form for each classifier.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from app.imaging import decode_image
from app.preprocess import PIPELINES, product_style
from app.runtimes import load_runtime
from app.settings import DEFAULT_MODELS_DIR

CLASSIFIERS = ("fashion-mnist-conv-classifier", "fashion-mnist-pretrained-classifier")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def dataset_look(image: np.ndarray) -> bytes:
    """A uint8 28x28 dataset image scaled up to 112x112 (bicubic), as a PNG."""
    return _encoded(Image.fromarray(image).resize((112, 112), Image.Resampling.BICUBIC), "PNG")


def on_white_page(image: np.ndarray, seed: int) -> bytes:
    """A uint8 28x28 dataset image negated (dark on white), scaled up 4-8x and placed off-centre on a
    400x320 white page, as a JPEG (quality 85)."""
    rng = np.random.default_rng(seed)
    side = int(rng.integers(112, 225))
    garment = Image.fromarray(255 - image).resize((side, side), Image.Resampling.BICUBIC)
    page = Image.new("L", (400, 320), 255)
    page.paste(garment, (int(rng.integers(0, 400 - side)), int(rng.integers(0, 320 - side))))
    return _encoded(page, "JPEG", quality=85)


def on_grey_paper(image: np.ndarray, seed: int) -> bytes:
    """:func:`on_white_page`'s page dimmed to grey 225 with Gaussian noise (std 12 of 255), as a JPEG."""
    page = np.asarray(Image.open(io.BytesIO(on_white_page(image, seed))), np.float64) * 225 / 255
    noisy = page + np.random.default_rng(seed).normal(0, 12, page.shape)
    return _encoded(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=85)


FORMS: dict[str, Callable[[np.ndarray, int], bytes]] = {
    "dataset": lambda image, _: dataset_look(image),
    "page": on_white_page,
    "photo": on_grey_paper,
}
VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mnist": PIPELINES["mnist"],
    "none": PIPELINES["none"],
    "product": PIPELINES["product"],
    "product, sharpened (step 4)": partial(product_style, amount=1.0),
    "product, sharpening 0.5": partial(product_style, amount=0.5),
    "product, sharpening 2": partial(product_style, amount=2.0),
    "product, subsampled": partial(product_style, subsample=True),
    "product, trim tolerance 10 %": partial(product_style, tolerance=0.10),
    "product, trim tolerance 2 %": partial(product_style, tolerance=0.02),
    "product, trim pixel by pixel": partial(product_style, radius=0),
    "product, box 5 %": partial(product_style, box_tolerance=0.05),
    "product, box 15 %": partial(product_style, box_tolerance=0.15),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="the first N test images")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    args = parser.parse_args()
    from training.datasets import load_dataset

    test = load_dataset("fashion-mnist", os.environ.get("AESERVE_DATA_DIR"), allow_download=False).test
    images, labels = test.images[: args.count], test.labels[: args.count]
    models = {}
    for name in CLASSIFIERS:
        folder = max((args.models_dir / name).iterdir(), key=lambda p: int(p.name))
        manifest = json.loads((folder / "manifest.json").read_text())
        models[name] = load_runtime("litert", folder, manifest, 1).function(("probabilities",))

    def accuracy(batch: np.ndarray) -> list[float]:
        return [100 * float(np.mean(f(batch)["probabilities"].argmax(1) == labels)) for f in models.values()]

    print(f"{len(images)} Fashion-MNIST test images; accuracy % of {', '.join(CLASSIFIERS)}")
    print(f"{'arrays':<40}" + "".join(f"{a:>10.1f}" for a in accuracy(test.pixels()[: args.count])))
    for form, make in FORMS.items():
        greys = [decode_image(make(image, seed), 10**8) for seed, image in enumerate(images)]
        for variant, rule in VARIANTS.items():
            batch = np.stack([rule(grey) for grey in greys]).astype(np.float32)
            print(f"{form + ': ' + variant:<40}" + "".join(f"{a:>10.1f}" for a in accuracy(batch)))


if __name__ == "__main__":
    main()
