"""The preprocessing rules that turn an uploaded image file's grey pixels into a model's 28x28 input.

Each model names its rule in its manifest (``preprocess``; a manifest without one means ``mnist``):
the images a model was trained on were made by that rule, so an upload prepared the same way looks
like them. A request's ``preprocess=`` query parameter overrides the model's rule.

- ``mnist``: how MNIST was made from scanned digits (:func:`app.imaging.mnist_style`).
- ``product``: how Fashion-MNIST was made from Zalando's product photos (:func:`product_style`).
- ``none``: only resized to 28x28 (:func:`app.imaging.plain_28`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import imageprep
from app.imaging import SIDE, _check_grey, _resize, mnist_style, plain_28

DIGITS, PRODUCT, NONE, FIT = "mnist", "product", "none", imageprep.FIT
# What a manifest without a ``preprocess`` field means.
DEFAULT_RULE = DIGITS
DESCRIPTIONS = {
    DIGITS: "MNIST's digit pipeline: light background inverted, ink cropped, fitted into 20x20, centred by mass",
    PRODUCT: "Fashion-MNIST's product pipeline: border of the background colour trimmed, longest edge resized to 28, "
    "centred in 28x28, negated (an image already on a dark background is not)",
    NONE: "grey, resized to 28x28, nothing else",
    FIT: "grey, fitted inside 28x28 keeping the aspect ratio, padded with the background (the median of its "
    "border); what `python -m training train` does to image files",
}
RULES = tuple(DESCRIPTIONS)

# Fashion-MNIST's trim: pixels within 5 % of the maximum intensity of the background colour are border.
# A photo's noise passes that alone: a pixel is the garment's only where the mean of its box (2 * TRIM_RADIUS
# + 1 pixels a side) also differs by more than BOX_TOLERANCE.
TRIM_TOLERANCE, TRIM_RADIUS, BOX_TOLERANCE = 0.05, 2, 0.10
# The sharpening: a Gaussian of standard deviation 1.0 (radius 1, three taps), unsharp-masked by this amount.
# Off by default: the dataset's images carry their sharpening already, and uploads made from them were
# classified better without a second one (README, "Preprocessing of image files").
SHARPEN_SIGMA, SHARPEN_AMOUNT = 1.0, 0.0
_TAPS = np.exp(-0.5 * (np.arange(-1, 2) / SHARPEN_SIGMA) ** 2)
_TAPS = (_TAPS / _TAPS.sum()).astype(np.float32)


def _border_colour(grey: np.ndarray) -> float:
    """The background: the median of the border pixels (a photo's noise and a stray corner do not decide it)."""
    return float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))


def _box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """The mean of each pixel's (2 * radius + 1)-sided box, edges repeated (summed-area table)."""
    if radius == 0:
        return image
    side = 2 * radius + 1
    table = np.pad(np.pad(image, radius, mode="edge").astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]) / side**2


def _blur(image: np.ndarray) -> np.ndarray:
    """A separable three-tap Gaussian blur, edges repeated."""
    padded = np.pad(image, 1, mode="edge")
    rows = _TAPS[0] * padded[:-2] + _TAPS[1] * padded[1:-1] + _TAPS[2] * padded[2:]
    return _TAPS[0] * rows[:, :-2] + _TAPS[1] * rows[:, 1:-1] + _TAPS[2] * rows[:, 2:]


def sharpen(image: np.ndarray, amount: float = SHARPEN_AMOUNT) -> np.ndarray:
    """Unsharp masking: the image plus ``amount`` times its difference from its Gaussian blur, clipped to 0..1."""
    if amount == 0:
        return image
    return np.clip(image + amount * (image - _blur(image)), 0.0, 1.0).astype(np.float32)


def _picks(length: int, count: int) -> np.ndarray:
    """The indices of ``count`` evenly spaced rows (or columns) of ``length``, each at its cell's centre."""
    return ((np.arange(count) + 0.5) * length / count).astype(int)


def product_style(
    grey: np.ndarray,
    amount: float = SHARPEN_AMOUNT,
    tolerance: float = TRIM_TOLERANCE,
    subsample: bool = False,
    radius: int = TRIM_RADIUS,
    box_tolerance: float = BOX_TOLERANCE,
) -> np.ndarray:
    """Fashion-MNIST's own making, from a product photo to a 28x28 image (its README, steps 2-7).

    The border that matches the background colour (within 5 %; a pixel whose 5x5 box is within 10 %
    of it too, against a photo's noise) is trimmed, the longest edge is resized
    to 28 (Lanczos), the image is sharpened when ``amount`` is above 0 (by default it is not: see
    ``SHARPEN_AMOUNT``), the short edge is extended to 28 with the background, centred,
    and the intensities are negated: a garment on a light page becomes a light garment on black.
    An image whose background (its border's median) is dark already looks like a dataset image and
    is not negated. The background becomes exactly 0. A blank image stays blank. ``amount`` (of
    sharpening), ``tolerance``, ``radius`` and ``box_tolerance`` (of the trim; radius 0: pixel by pixel,
    as the README says) and
    ``subsample`` (resize by skipping rows and columns, as the README says, instead of Lanczos) are
    the rule's variants that ``scripts/upload_accuracy.py`` measures.
    """
    _check_grey(grey)
    background = _border_colour(grey)
    # How far each pixel is from the background, towards the garment (negation for a light page).
    with np.errstate(invalid="ignore"):  # only arrays from outside decode_image can hold NaN or Inf: as no ink
        signed = np.clip(np.nan_to_num(grey - background if background < 0.5 else background - grey, nan=0.0), -1, 1)
        # a garment's pixel, and its box too (a photo's noise averages out there, before the clip to ink)
        content = (signed > tolerance) & (_box_mean(signed, radius) > box_tolerance)
    ink = np.clip(signed, 0.0, 1.0)
    rows = np.flatnonzero(content.any(axis=1))
    if len(rows) == 0:
        return np.zeros((SIDE, SIDE), np.float32)
    cols = np.flatnonzero(content.any(axis=0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = ink.shape
    scale = SIDE / max(height, width)
    size = max(1, round(width * scale)), max(1, round(height * scale))
    fitted = ink[np.ix_(_picks(height, size[1]), _picks(width, size[0]))] if subsample else _resize(ink, *size)
    fitted = sharpen(np.clip(fitted, 0.0, 1.0), amount)
    canvas = np.zeros((SIDE, SIDE), np.float32)
    top, left = (SIDE - fitted.shape[0]) // 2, (SIDE - fitted.shape[1]) // 2
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return canvas


def fit_style(grey: np.ndarray) -> np.ndarray:
    """The ``fit`` rule (:func:`imageprep.fit_28`, the training's own): 422 for an empty array."""
    _check_grey(grey)
    return imageprep.fit_28(grey)


PIPELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    DIGITS: mnist_style,
    PRODUCT: product_style,
    NONE: plain_28,
    FIT: fit_style,
}


def rule_of(manifest: dict) -> str:
    """The rule a model's manifest names (``mnist`` when it names none)."""
    return manifest.get("preprocess", DEFAULT_RULE)


def prepare(grey: np.ndarray, rule: str) -> np.ndarray:
    """A decoded grey image (0..1) → the 28x28 float32 input ``rule`` makes of it."""
    return PIPELINES[rule](grey)
