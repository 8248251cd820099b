"""Image preparation that the service (``app/``) and the training (``training/``) both use.

``app/`` and ``training/`` never import each other; both may import this package. It holds the
rules that turn a grey image (float32, 0..1, any size) into a model's 28x28 input:

- :func:`fit_28` (``fit``): greyscale kept as it is, fitted inside 28x28 keeping the aspect ratio,
  padded with the background; what ``python -m training train`` does to image files by default.
- :func:`mnist_style` (``mnist``): MNIST's ink centring (invert a light background, crop to the ink,
  fit 20x20, centre by mass); the service's rule for digit models and ``--preprocess mnist``.
"""

from imageprep.rules import DIGIT, FIT, SIDE, background, fit_28, mnist_style, resize

__all__ = ["DIGIT", "FIT", "SIDE", "background", "fit_28", "mnist_style", "resize"]
