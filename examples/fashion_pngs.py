"""Write Fashion-MNIST test images as PNG files, one folder per class: a dataset to try templates on.

    python examples/fashion_pngs.py /tmp/clothes --count 3000

The first ``count`` images of the Fashion-MNIST test split (from ``$AESERVE_DATA_DIR``, as the
training reads it) become ``<folder>/<class>/<index>.png``; a class name's "/" becomes "-"
("T-shirt-top"). ``python -m training train TEMPLATE --data <folder> ...`` then trains on them as on
any folder of your images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from training.datasets import load_dataset


def write_pngs(folder: Path, count: int, data_dir: str | None = None, split: str = "test") -> int:
    """Write the first ``count`` images of Fashion-MNIST's ``split`` as PNGs by class; returns how many."""
    data = load_dataset("fashion-mnist", data_dir, allow_download=False)
    chosen = data.test if split == "test" else data.train
    images, labels = chosen.images, chosen.labels
    count = min(count, len(images))
    names = [n.replace("/", "-") for n in data.class_names]
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(images[i], mode="L").save(folder / names[labels[i]] / f"{i:05d}.png")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--data-dir", help="folder with fashion-mnist/ (default: $AESERVE_DATA_DIR)")
    args = parser.parse_args()
    written = write_pngs(args.folder, args.count, args.data_dir, args.split)
    print(f"wrote {written} PNG files under {args.folder}")


if __name__ == "__main__":
    main()
