"""Training on your own data: how long the two slow parts take.

    python benchmarks/own_data.py read [--count 60000]   # decode a folder of PNG files into arrays
    python benchmarks/own_data.py train [--count 2000]   # conv-small, 5 epochs, from --data to the export

``read`` writes the first ``count`` MNIST training images as PNG files (one folder per class) into a
temporary folder, then times :func:`training.sources.load_source` on it: decoding on every core, the
fit rule, checks, sha256 of the contents and the split (the goal: under 60 s for 60,000). ``train``
writes ``count`` Fashion-MNIST training images as an .npz and times
``python -m training train conv-small --data it --set epochs=5`` in this process, from reading the data
to the exported version (the goal: under 2 minutes for 2,000 images). Both need ``$AESERVE_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from PIL import Image

from training.datasets import load_dataset


def read(count: int, workers: int | None) -> None:
    from training.sources import load_source

    data = load_dataset("mnist", allow_download=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "digits"
        # the loader carved a validation split from train: join them again for the whole 60,000
        images = np.concatenate([data.train.images, data.val.images])[:count]
        labels = np.concatenate([data.train.labels, data.val.labels])[:count]
        for digit in range(10):
            (folder / str(digit)).mkdir(parents=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image, mode="L").save(folder / str(label) / f"{i:05d}.png")
        start = time.perf_counter()
        source = load_source(str(folder), workers=workers)
        seconds = time.perf_counter() - start
        print(
            f"read {source.facts['files']} PNG files ({source.facts['bytes'] / 2**20:.1f} MiB) with "
            f"{workers or os.cpu_count()} workers on {os.cpu_count()} cores: {seconds:.1f} s "
            f"({source.facts['files'] / seconds:,.0f} files/s)"
        )
        # the pixels are MNIST's own: a 28x28 image passes the fit rule unchanged
        together = np.concatenate([source.train.pixels(), source.val.pixels(), source.test.pixels()])
        assert np.isclose(together.sum(), images.astype(np.float64).sum() / 255.0, rtol=1e-6)


def train(count: int) -> None:
    from training.cli import main

    data = load_dataset("fashion-mnist", allow_download=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clothes.npz"
        np.savez(path, images=data.train.images[:count], labels=data.train.labels[:count])
        start = time.perf_counter()
        args = ["train", "conv-small", "--data", str(path), "--name", "bench", "--models-dir", f"{tmp}/models"]
        main([*args, "--set", "epochs=5"])
        seconds = time.perf_counter() - start
        print(f"conv-small, 5 epochs on {count} images, from --data to the export: {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("read", "train"))
    parser.add_argument("--count", type=int, help="images (default: 60,000 to read, 2,000 to train on)")
    parser.add_argument("--workers", type=int, help="decoding processes (default: one per core)")
    args = parser.parse_args()
    if args.what == "read":
        read(args.count or 60_000, args.workers)
    else:
        train(args.count or 2_000)


if __name__ == "__main__":
    main()
