"""MNIST and Fashion-MNIST from their original IDX gzip files.

Lookup order for a dataset's folder: the ``data_dir`` argument, the
``AESERVE_DATA_DIR`` environment variable, then the well-known system
locations (Debian's ``dataset-fashion-mnist`` package). Each of those roots
holds one sub-folder per dataset (``mnist/``, ``fashion-mnist/``); a folder
that directly holds the four files is accepted too. Only when no local copy
exists does the loader fall back to the Keras download (online users only).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "AESERVE_DATA_DIR"
DATASETS = ("mnist", "fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}
# The rule by which an uploaded image file is made to look like each dataset's images: the name of the
# service's rule (app/preprocess.py), which an exported model's manifest records as "preprocess".
PREPROCESS = {"mnist": "mnist", "fashion-mnist": "product"}
SYSTEM_DIRS = {
    "mnist": [Path("/usr/share/datasets/mnist")],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or corrupt; the message says which file and why."""


@dataclass(frozen=True)
class Split:
    """Images as uint8 ``[N, 28, 28]`` (0..255) or float32 (0..1), and labels ``[N]`` (None when unlabelled)."""

    images: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.images)

    def pixels(self) -> np.ndarray:
        """Images as float32 in 0..1, the form every model takes."""
        if self.images.dtype == np.float32:
            return self.images
        return self.images.astype(np.float32) / 255.0

    def take(self, n: int) -> Split:
        """The first ``n`` examples."""
        return Split(self.images[:n], None if self.labels is None else self.labels[:n])


@dataclass(frozen=True)
class Dataset:
    """A dataset with a seeded validation split carved from its training set."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    source: str
    checksums: dict[str, str]
    # How the splits were made, and the source's files, size and sha256 (``--data`` sources).
    split: dict | None = None
    facts: dict | None = None
    # The rule that made the images from image files (``fit`` or ``mnist``); None for the named datasets.
    preprocess: str | None = None

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None


def read_idx(path: Path, expected_magic: int, expected_count: int | None = None) -> np.ndarray:
    """Read one gzip-compressed IDX file, checking magic number, dimensions and length."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable gzip file ({exc})") from None
    if len(data) < 8:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    magic, count = struct.unpack(">ii", data[:8])
    if magic != expected_magic:
        raise DatasetError(f"{path}: magic number {magic}, expected {expected_magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "i" * ndim, data[4:header])
    if expected_magic == IMAGE_MAGIC and dims[1:] != (28, 28):
        raise DatasetError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    if expected_count is not None and count != expected_count:
        raise DatasetError(f"{path}: holds {count} items, expected {expected_count}")
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DatasetError(f"{path}: {len(data) - header} data bytes, header promises {size} (truncated or padded)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``name``'s files, in order."""
    roots = [Path(p) for p in (data_dir, os.environ.get(DATA_DIR_ENV)) if p]
    dirs = [d for root in roots for d in (root / name, root)]
    return dirs + SYSTEM_DIRS[name]


def find_local(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first candidate folder that holds any of the dataset's files, if one does."""
    for folder in candidate_dirs(name, data_dir):
        if any((folder / f).exists() for f in FILES.values()):
            return folder
    return None


def load_split(folder: Path, split: str, strict_counts: bool = True) -> Split:
    """Load ``train`` or ``test`` from a folder holding the IDX gzip files."""
    expected = EXPECTED_COUNTS[split] if strict_counts else None
    images = read_idx(folder / FILES[f"{split}_images"], IMAGE_MAGIC, expected)
    labels = read_idx(folder / FILES[f"{split}_labels"], LABEL_MAGIC, expected)
    if len(images) != len(labels):
        raise DatasetError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{folder}: {split} labels hold {labels.max()}, expected 0..9")
    return Split(images, labels)


# Where keras.datasets downloads from: Fashion-MNIST as the same IDX files, MNIST as one .npz.
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
KERAS_MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"


def _keras_download(name: str) -> tuple[Split, Split]:
    """The files keras.datasets would download (cached where Keras caches them), read without pickle.

    ``keras.datasets.mnist.load_data`` opens its .npz with ``allow_pickle=True``; this reads the same
    file with pickle refused, and Fashion-MNIST's IDX files with the loader above.
    """
    from keras.utils import get_file

    if name == "fashion-mnist":
        paths = [get_file(f, origin=KERAS_ORIGIN + f, cache_subdir="datasets/fashion-mnist") for f in FILES.values()]
        folder = Path(paths[0]).parent
        return load_split(folder, "train"), load_split(folder, "test")
    path = get_file("mnist.npz", origin=KERAS_ORIGIN + "mnist.npz", file_hash=KERAS_MNIST_SHA256)
    with np.load(path, allow_pickle=False) as arrays:
        return (
            Split(arrays["x_train"], arrays["y_train"].astype(np.uint8)),
            Split(arrays["x_test"], arrays["y_test"].astype(np.uint8)),
        )


def split_validation(train: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """Carve a seeded random validation split of ``val_size`` examples from ``train``."""
    order = np.random.default_rng(seed).permutation(len(train))
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    return (
        Split(train.images[train_idx], train.labels[train_idx]),
        Split(train.images[val_idx], train.labels[val_idx]),
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    val_size: int = 5000,
    seed: int = 42,
    strict_counts: bool = True,
    allow_download: bool = True,
) -> Dataset:
    """Load ``mnist`` or ``fashion-mnist`` with a seeded validation split.

    Raises :class:`DatasetError` naming the file and the fault when a local copy is
    incomplete or corrupt, or naming every folder searched when there is none and
    the Keras download is not allowed or fails.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    folder = find_local(name, data_dir)
    if folder is not None:
        train = load_split(folder, "train", strict_counts)
        test = load_split(folder, "test", strict_counts)
        source = str(folder.resolve())
        checksums = {f: _sha256(folder / f) for f in FILES.values()}
    else:
        searched = ", ".join(str(d) for d in candidate_dirs(name, data_dir))
        if not allow_download:
            raise DatasetError(f"{name}: no local copy (searched {searched}); set {DATA_DIR_ENV} or pass --data-dir")
        try:
            train, test = _keras_download(name)
        except Exception as exc:  # noqa: BLE001 - any download failure means the same to the user
            raise DatasetError(
                f"{name}: no local copy (searched {searched}) and the Keras download failed: {exc}"
            ) from None
        source, checksums = "keras.datasets download", {}
    train, val = split_validation(train, val_size, seed)
    return Dataset(name, train, val, test, CLASS_NAMES[name], source, checksums)
