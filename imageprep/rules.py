"""The 28x28 rules, in numpy: one implementation for the service's uploads and the training's images."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SIDE = 28
FIT = "fit"


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


@lru_cache(maxsize=64)
def _resample_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's Lanczos-3 resampling of one axis as an ``[out_size, in_size]`` matrix.

    The same coefficients as Pillow's ``precompute_coeffs`` (libImaging/Resample.c): the kernel
    widened by the reduction factor, each output pixel's weights normalised to sum to one.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        kernel = _lanczos((np.arange(first, last) - center + 0.5) / filterscale)
        total = kernel.sum()
        weights[out, first:last] = kernel / total if total != 0 else kernel
    return weights


def resize(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize of a float32 image, as Pillow's ``resize(LANCZOS)`` of a mode "F" image computes it
    (horizontal pass, then vertical, in double precision, rounded to float32 after each): two small
    matrix products instead of a round trip through a Pillow image."""
    rows, cols = grey.shape
    if width != cols:
        grey = (grey.astype(np.float64) @ _resample_weights(cols, width).T).astype(np.float32)
    if height != rows:
        grey = (_resample_weights(rows, height) @ grey.astype(np.float64)).astype(np.float32)
    return grey


def background(grey: np.ndarray) -> float:
    """The background grey: the median of the image's border pixels."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(np.median(border))


def fit_28(grey: np.ndarray) -> np.ndarray:
    """The ``fit`` rule: a grey image (0..1, any size) fitted inside 28x28, aspect ratio kept, centred,
    the rest filled with its background (the median of its border). Nothing is inverted, cropped or
    centred by mass: an image that is 28x28 already comes back unchanged."""
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"image has shape {grey.shape}; expected at least one row and column of pixels")
    grey = np.asarray(grey, np.float32)
    height, width = grey.shape
    if (height, width) == (SIDE, SIDE):
        return grey.copy()
    scale = SIDE / max(height, width)
    size = max(1, round(width * scale)), max(1, round(height * scale))
    fitted = resize(grey, *size).clip(0.0, 1.0)
    canvas = np.full((SIDE, SIDE), background(grey), np.float32)
    top, left = (SIDE - fitted.shape[0]) // 2, (SIDE - fitted.shape[1]) // 2
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return canvas


BOX = 20
_POSITIONS = np.arange(SIDE)
DIGIT = "mnist"


def mnist_style(grey: np.ndarray) -> np.ndarray:
    """MNIST's own normalisation: light ink on black, cropped, fitted to 20x20, centred by mass in 28x28.

    The background is the median of the border; a light background is inverted. Ink
    below a fifth of the strongest ink is treated as noise, and the crop box holds the
    pixels of at least half the strongest ink. A blank image stays blank. ``ValueError`` for
    an array that is not a 2-D image of at least one pixel.
    """
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"image has shape {grey.shape}; expected at least one row and column of pixels")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    border.sort()
    middle = len(border) // 2
    background = float(border[middle] if len(border) % 2 else (border[middle - 1] + border[middle]) / 2)
    ink = grey - background if background < 0.5 else background - grey
    peak = float(ink.max())
    if peak < 0.05:
        return np.zeros((SIDE, SIDE), np.float32)
    ink /= peak
    # The crop box comes from confident ink only: a few noise pixels anywhere on a photo
    # would otherwise stretch it to the whole page. (np.nonzero lists rows in order.)
    rows, cols = np.nonzero(ink > 0.5)
    ink = ink[rows[0] : rows[-1] + 1, cols.min() : cols.max() + 1]
    ink = ((ink - 0.2) / 0.8).clip(0.0, 1.0)
    height, width = ink.shape
    scale = BOX / max(height, width)
    fitted = resize(ink, max(1, round(width * scale)), max(1, round(height * scale))).clip(0.0, 1.0)
    total = float(fitted.sum())
    canvas = np.zeros((SIDE, SIDE), np.float32)
    if total <= 0:
        return canvas
    top = round(SIDE / 2 - float(fitted.sum(axis=1) @ _POSITIONS[: fitted.shape[0]]) / total)
    left = round(SIDE / 2 - float(fitted.sum(axis=0) @ _POSITIONS[: fitted.shape[1]]) / total)
    top = min(max(top, 0), SIDE - fitted.shape[0])
    left = min(max(left, 0), SIDE - fitted.shape[1])
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return canvas
