"""Image preparation that the service (``app/``) and the training (``training/``) both use.

``app/`` and ``training/`` never import each other; both may import this package. It holds the
rules that turn a grey image (float32, 0..1, any size) into a model's 28x28 input:

- :func:`fit_28`: greyscale kept as it is, fitted inside 28x28 keeping the aspect ratio, padded
  with the background (the rule ``python -m training train`` applies to image files by default).
"""

from imageprep.rules import FIT, SIDE, background, fit_28, resize

__all__ = ["FIT", "SIDE", "background", "fit_28", "resize"]
