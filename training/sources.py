"""Your own images as a :class:`~training.datasets.Dataset`: ``--data PATH`` of ``python -m training train``.

PATH is one of:

- a folder of image files (any format Pillow reads, any size, colour or grey): one sub-folder per class
  (the folder names are the class names) or flat (unlabelled); ``train/`` and ``test/`` sub-folders,
  when present, are the splits, each laid out the same way;
- a ``.npz`` with ``images`` ([N,28,28] or [N,28,28,1], uint8 0..255 or float 0..1), optional ``labels``
  (integers) and ``class_names``;
- a ``.npy`` of images (unlabelled);
- an IDX images file (``*-images-idx3-ubyte[.gz]``, its ``*-labels-idx1-ubyte[.gz]`` beside it when
  there is one), or a folder of them with ``train`` and ``t10k`` (or ``test``) prefixes, like MNIST's;
- the names ``mnist`` and ``fashion-mnist`` (:func:`training.datasets.load_dataset`).

Image files become float32 [N,28,28] in 0..1 by one rule, :func:`imageprep.fit_28` (``fit``: grey,
fitted inside 28x28 keeping the aspect ratio, padded with the background), or by the MNIST-style
ink centring with ``preprocess="mnist"``. A source without a test split is split by a seeded
permutation: 10 % test, 10 % validation, the rest training; with a test split, 10 % of the training
images are held out for validation. Every fault in the data is a :class:`DatasetError` naming the file
and the fault, raised before any training.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from training.datasets import DATASETS, PREPROCESS, Dataset, DatasetError, Split, load_dataset

MIN_IMAGES = 50
TEST_FRACTION = VAL_FRACTION = 0.1
RULES = ("fit", "mnist")
# Below this many files a folder is decoded in this process: starting the workers costs more.
PARALLEL_FROM = 2000
CHUNK = 500
IDX_IMAGES = re.compile(r"^(?P<prefix>.*)-images[.-]idx3-ubyte(?P<gz>\.gz)?$")
IDX_MAGIC = {3: 2051, 1: 2049}


def rule_function(rule: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function of a preprocessing rule: grey 0..1 (any size) to float32 28x28."""
    if rule == "fit":
        from imageprep import fit_28

        return fit_28
    if rule == "mnist":
        from imageprep import mnist_style

        return mnist_style
    raise DatasetError(f"unknown preprocessing rule {rule!r}; rules: {', '.join(RULES)}")


# ---------------------------------------------------------------- image files


def _grey(image) -> np.ndarray:
    """A Pillow image as float32 grey 0..1: transparency composited onto white, 16-bit and float scaled."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError("holds NaN or infinite pixel values")
        largest = float(values.max(initial=0))
        scale = 1.0 if image.mode == "F" and largest <= 1.0 else 65535.0 if largest > 255 else 255.0
        return np.clip(values / scale, 0.0, 1.0)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def decode_file(path: Path, rule: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, bytes]:
    """One image file to a 28x28 float32 array by ``rule``; returns it and the file's bytes.

    Raises ``ValueError`` saying what is wrong with the file (not an image, truncated, empty).
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    data = path.read_bytes()
    if not data:
        raise ValueError("is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            grey = _grey(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise ValueError("is not an image file Pillow can read") from None
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for damaged files
        raise ValueError(f"is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    return rule(grey), data


def _decode_chunk(paths: list[str], rule_name: str) -> tuple[np.ndarray, list[str], int, tuple[str, str] | None]:
    """Decode files in a worker: their images, each file's sha256, their total size, the first fault."""
    rule = rule_function(rule_name)
    images = np.zeros((len(paths), 28, 28), np.float32)
    digests, size = [], 0
    for i, name in enumerate(paths):
        try:
            images[i], data = decode_file(Path(name), rule)
        except (OSError, ValueError) as exc:
            return images, digests, size, (name, str(exc))
        digests.append(hashlib.sha256(data).hexdigest())
        size += len(data)
    return images, digests, size, None


class _Progress:
    """A progress bar on stderr (tqdm) while files are decoded."""

    def __init__(self, total: int, label: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, mininterval=0.5, leave=True)

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def decode_files(
    files: list[Path], rule: str, root: Path, workers: int | None = None, progress: bool = True
) -> tuple[np.ndarray, dict]:
    """Decode image files (on every core when there are many) with a progress bar.

    Returns the images and ``{"bytes": total size, "digests": [sha256 of each file]}`` in file order.
    """
    names = [str(f) for f in files]
    chunks = [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]
    workers = workers or os.cpu_count() or 1
    bar = _Progress(len(names), f"decoding {root.name or root}") if progress else None
    parts = []
    try:
        if len(names) < PARALLEL_FROM or workers == 1:
            results = (_decode_chunk(chunk, rule) for chunk in chunks)
            parts = _collect(results, bar, root)
        else:
            # spawn: this process may hold TensorFlow's threads, which a fork would copy in a broken state
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                parts = _collect(pool.map(_decode_chunk, chunks, [rule] * len(chunks)), bar, root)
    finally:
        if bar is not None:
            bar.close()
    images = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 28, 28), np.float32)
    return images, {"bytes": sum(p[2] for p in parts), "digests": [d for p in parts for d in p[1]]}


def _collect(results, bar, root: Path) -> list:
    parts = []
    for part in results:
        if part[3] is not None:
            name, fault = part[3]
            raise DatasetError(f"{Path(name).relative_to(root) if root in Path(name).parents else name}: {fault}")
        parts.append(part)
        if bar is not None:
            bar(len(part[1]))
    return parts


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _folder_layout(folder: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """A split folder's files, labels (None when flat) and class names."""
    entries = _visible(folder)
    dirs = [p for p in entries if p.is_dir()]
    files = [p for p in entries if p.is_file()]
    if dirs and files:
        raise DatasetError(
            f"{folder}: holds both image files ({files[0].name}, ...) and class folders ({dirs[0].name}, ...); "
            "put every image in a class folder, or none"
        )
    if not dirs:
        return files, None, []
    paths, labels = [], []
    for label, class_dir in enumerate(dirs):
        inner = [p for p in _visible(class_dir) if p.is_file()]
        nested = [p for p in _visible(class_dir) if p.is_dir()]
        if nested:
            raise DatasetError(f"{nested[0]}: a folder inside the class folder {class_dir.name}; expected image files")
        if not inner:
            raise DatasetError(f"{class_dir}: class folder {class_dir.name!r} holds no image files")
        paths += inner
        labels += [label] * len(inner)
    return paths, labels, [d.name for d in dirs]


def _read_folder(folder: Path, rule: str, workers: int | None, progress: bool) -> dict:
    splits = {s: folder / s for s in ("train", "test") if (folder / s).is_dir()}
    others = [p for p in _visible(folder) if p.name not in splits]
    if splits and "train" not in splits:
        raise DatasetError(f"{folder}: has a test/ folder but no train/ folder")
    if splits and others:
        raise DatasetError(f"{folder}: beside train/ and test/ it holds {others[0].name}; expected only those two")
    layouts = {s: _folder_layout(p) for s, p in splits.items()} if splits else {"all": _folder_layout(folder)}
    names = {s: layout[2] for s, layout in layouts.items()}
    if len({tuple(n) for n in names.values()}) > 1:
        raise DatasetError(
            f"{folder}: train/ has classes {', '.join(names['train']) or '(none)'} but test/ has "
            f"{', '.join(names['test']) or '(none)'}; both need the same class folders"
        )
    result = {"class_names": next(iter(names.values())), "files": 0, "bytes": 0, "digests": []}
    for split, (files, labels, _) in layouts.items():
        images, info = decode_files(files, rule, folder, workers, progress)
        rel = [f.relative_to(folder).as_posix() for f in files]
        result["digests"] += [f"{d}  {r}" for d, r in zip(info["digests"], rel, strict=True)]
        result["bytes"] += info["bytes"]
        result["files"] += len(files)
        result[split] = (images, None if labels is None else np.asarray(labels, np.int64), str(folder / rel[0]))
    result["sha256"] = hashlib.sha256("\n".join(sorted(result.pop("digests"))).encode()).hexdigest()
    result["kind"] = "image folder"
    return result


# ---------------------------------------------------------------- arrays


def _check_pixels(images: np.ndarray, path: Path, what: str = "images") -> np.ndarray:
    """Array images as float32 [N,28,28] in 0..1; uint8 as 0..255, floats as 0..1 (NaN or out of range refused)."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(f"{path}: {what} have shape {list(images.shape)}; expected [N,28,28] or [N,28,28,1]")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if images.dtype.kind == "f":
        finite = np.isfinite(images)
        if not finite.all():
            index = int(np.argwhere(~finite)[0][0])
            raise DatasetError(f"{path}: {what} hold NaN or infinite values (first in image {index})")
        outside = (images < 0.0) | (images > 1.0)
        if outside.any():
            index = int(np.argwhere(outside)[0][0])
            raise DatasetError(
                f"{path}: {what} hold floats outside 0..1 (from {float(images.min()):g} to {float(images.max()):g}, "
                f"first in image {index}); floats must be in 0..1, or store uint8 0..255"
            )
        return images.astype(np.float32)
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DatasetError(f"{path}: {what} hold integers outside 0..255")
        return images.astype(np.float32) / 255.0
    raise DatasetError(f"{path}: {what} have dtype {images.dtype}; expected uint8 0..255 or float 0..1")


def _check_labels(labels: np.ndarray, count: int, path: Path, what: str = "labels") -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {what} must be a 1-D array of integers, not {labels.dtype} {list(labels.shape)}")
    if len(labels) != count:
        raise DatasetError(f"{path}: {len(labels)} {what} for {count} images; expected one label per image")
    if labels.size and labels.min() < 0:
        raise DatasetError(f"{path}: {what} hold {int(labels.min())}; expected 0 or more")
    return labels.astype(np.int64)


def _file_facts(*paths: Path) -> dict:
    digest = hashlib.sha256()
    size = 0
    for path in paths:
        data = path.read_bytes()
        digest.update(hashlib.sha256(data).hexdigest().encode() + b"  " + path.name.encode() + b"\n")
        size += len(data)
    return {"files": len(paths), "bytes": size, "sha256": digest.hexdigest()}


def _read_npz(path: Path) -> dict:
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    with arrays:
        if "images" not in arrays.files:
            raise DatasetError(f"{path}: holds no 'images' array (it holds {', '.join(arrays.files) or 'nothing'})")
        try:
            images = _check_pixels(arrays["images"], path)
            labels = _check_labels(arrays["labels"], len(images), path) if "labels" in arrays.files else None
            class_names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays.files else None
        except ValueError as exc:  # a pickled (object) array, refused
            raise DatasetError(f"{path}: {exc}") from None
    if class_names is not None and labels is not None and labels.size and labels.max() >= len(class_names):
        raise DatasetError(f"{path}: labels hold {int(labels.max())} but class_names has only {len(class_names)} names")
    if labels is not None and class_names is None:
        class_names = [str(k) for k in range(int(labels.max()) + 1)] if labels.size else []
    return {"all": (images, labels, str(path)), "class_names": class_names or [], "kind": "npz", **_file_facts(path)}


def _read_npy(path: Path) -> dict:
    try:
        images = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npy file ({exc})") from None
    pixels = _check_pixels(images, path)
    return {"all": (pixels, None, str(path)), "class_names": [], "kind": "npy", **_file_facts(path)}


def read_idx_file(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (gzip or not) of unsigned bytes with ``ndim`` dimensions, checked against its header."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: not a readable IDX file ({exc})") from None
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    (magic,) = struct.unpack(">i", data[:4])
    if magic != IDX_MAGIC[ndim]:
        raise DatasetError(f"{path}: magic number {magic}, expected {IDX_MAGIC[ndim]} (unsigned bytes, {ndim}-D)")
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "i" * ndim, data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise DatasetError(f"{path}: {len(data) - header} data bytes, header promises {size} (truncated or padded)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_pair(images_path: Path, rule: str) -> tuple[tuple, list[Path]]:
    match = IDX_IMAGES.match(images_path.name)
    images = read_idx_file(images_path, 3)
    if images.shape[1:] != (28, 28):
        fn = rule_function(rule)
        images = np.stack([fn(im.astype(np.float32) / 255.0) for im in images]) if len(images) else images
        pixels = images.astype(np.float32)
    else:
        pixels = images.astype(np.float32) / 255.0
    stem = match["prefix"] + "-labels-idx1-ubyte"
    candidates = [images_path.with_name(stem + ext) for ext in (".gz", "")] + [
        images_path.with_name(match["prefix"] + "-labels.idx1-ubyte")
    ]
    labels_path = next((c for c in candidates if c.exists()), None)
    if labels_path is None:
        return (pixels, None, str(images_path)), [images_path]
    labels = _check_labels(read_idx_file(labels_path, 1), len(pixels), labels_path)
    return (pixels, labels, str(images_path)), [images_path, labels_path]


def _read_idx(path: Path, rule: str) -> dict:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if IDX_IMAGES.match(p.name))
        by_split = {}
        for p in found:
            prefix = IDX_IMAGES.match(p.name)["prefix"]
            split = "test" if prefix in ("t10k", "test") else "train" if prefix == "train" else None
            if split is None:
                raise DatasetError(f"{p}: an IDX images file whose name starts neither train- nor t10k- (or test-)")
            by_split[split] = p
        if "test" in by_split and "train" not in by_split:
            raise DatasetError(f"{path}: has test IDX files but no train-images-idx3-ubyte")
    else:
        by_split = {"all": path}
    result, files = {"kind": "idx"}, []
    for split, images_path in by_split.items():
        result[split], used = _idx_pair(images_path, rule)
        files += used
    labelled = [result[s][1] is not None for s in by_split]
    if len(set(labelled)) > 1:
        raise DatasetError(f"{path}: the train and test splits must both have labels files, or neither")
    top = max((int(result[s][1].max()) for s in by_split if result[s][1] is not None and result[s][1].size), default=-1)
    result["class_names"] = [str(k) for k in range(top + 1)] if all(labelled) else []
    return result | _file_facts(*files)


def is_idx_folder(path: Path) -> bool:
    return path.is_dir() and any(IDX_IMAGES.match(p.name) for p in path.iterdir())


# ---------------------------------------------------------------- the dataset


def _split(images: np.ndarray, labels: np.ndarray | None, index: np.ndarray) -> Split:
    return Split(images[index], None if labels is None else labels[index])


def split_source(raw: dict, seed: int) -> tuple[Split, Split, Split, dict]:
    """Train, validation and test splits of a read source, and the manifest's record of how they were made."""
    rng = np.random.default_rng(seed)
    if "train" in raw and "test" in raw:
        images, labels, _ = raw["train"]
        order = rng.permutation(len(images))
        n_val = max(1, round(VAL_FRACTION * len(images)))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        test = Split(*raw["test"][:2])
        rule = f"the source's test split; a seeded {VAL_FRACTION:.0%} of its training split for validation"
    else:
        images, labels, _ = raw.get("all") or raw["train"]
        order = rng.permutation(len(images))
        n_test = max(1, round(TEST_FRACTION * len(images)))
        n_val = max(1, round(VAL_FRACTION * len(images)))
        test_idx, val = np.sort(order[:n_test]), np.sort(order[n_test : n_test + n_val])
        train = np.sort(order[n_test + n_val :])
        test = _split(images, labels, test_idx)
        rule = f"a seeded permutation: {TEST_FRACTION:.0%} test, {VAL_FRACTION:.0%} validation, the rest training"
    train_split, val_split = _split(images, labels, train), _split(images, labels, val)
    record = {
        "rule": rule,
        "seed": seed,
        "train": len(train_split),
        "val": len(val_split),
        "test": len(test),
    }
    return train_split, val_split, test, record


def _check_dataset(raw: dict, path: Path) -> None:
    splits = [s for s in ("all", "train", "test") if s in raw]
    total = sum(len(raw[s][0]) for s in splits)
    if total < MIN_IMAGES:
        raise DatasetError(f"{path}: holds {total} images; at least {MIN_IMAGES} are needed")
    labels = [raw[s][1] for s in splits if raw[s][1] is not None]
    if labels:
        present = np.unique(np.concatenate(labels))
        if len(present) < 2:
            name = raw["class_names"][present[0]] if raw["class_names"] else str(present[0])
            raise DatasetError(f"{path}: every image has the same label ({name}); a labelled source needs two classes")
    for split in splits:
        if len(raw[split][0]) == 0:
            raise DatasetError(f"{path}: its {split} split holds no images")


def dataset_name(data: str) -> str:
    """The served dataset name ``--data`` gives by default: the stem of the path (or the name itself)."""
    if data in DATASETS:
        return data
    path = Path(data)
    name = path.name
    for suffix in (".gz", ".npz", ".npy"):
        name = name.removesuffix(suffix)
    match = IDX_IMAGES.match(path.name)
    if match:
        name = match["prefix"]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "data"


def load_source(
    data: str,
    name: str | None = None,
    preprocess: str = "fit",
    seed: int = 42,
    data_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Read ``--data`` (a path or ``mnist``/``fashion-mnist``), check it, convert and split it.

    ``name`` is the served dataset name (default :func:`dataset_name`). Raises :class:`DatasetError`
    naming the file and the fault.
    """
    if preprocess not in RULES:
        raise DatasetError(f"unknown preprocessing rule {preprocess!r}; rules: {', '.join(RULES)}")
    if data in DATASETS and not Path(data).exists():
        loaded = load_dataset(data, data_dir, seed=seed)
        return _renamed(loaded, name or data, PREPROCESS[data])
    path = Path(data).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (and not one of the names {', '.join(DATASETS)})")
    if path.is_dir() and is_idx_folder(path):
        raw = _read_idx(path, preprocess)
    elif path.is_dir():
        raw = _read_folder(path, preprocess, workers, progress)
    elif path.suffix == ".npz":
        raw = _read_npz(path)
    elif path.suffix == ".npy":
        raw = _read_npy(path)
    elif IDX_IMAGES.match(path.name):
        raw = _read_idx(path, preprocess)
    else:
        raise DatasetError(
            f"{path}: not a source training reads (a folder of images, .npz, .npy, an *-images-idx3-ubyte[.gz] "
            "file, or mnist / fashion-mnist)"
        )
    _check_dataset(raw, path)
    train, val, test, split = split_source(raw, seed)
    facts = {
        "kind": raw["kind"],
        "files": raw["files"],
        "bytes": raw["bytes"],
        "sha256": raw["sha256"],
    }
    return Dataset(
        name or dataset_name(data),
        train,
        val,
        test,
        raw["class_names"],
        str(path.resolve()),
        {},
        split=split,
        facts=facts,
        preprocess=preprocess,
    )


def _renamed(data: Dataset, name: str, preprocess: str) -> Dataset:
    from dataclasses import replace

    return replace(data, name=name, preprocess=preprocess)


def data_of_manifest(manifest: dict, data_dir: str | None = None) -> Dataset:
    """The dataset an exported model was trained on, read again as its manifest says (same split).

    A ``--data`` source must still hold the same contents (its sha256); a named dataset is loaded as
    the recipes load it.
    """
    contents = manifest.get("data", {}).get("contents")
    if not contents:
        return load_dataset(manifest["dataset"], data_dir)
    seed = manifest["data"].get("split", {}).get("seed", manifest["training"]["seed"])
    data = load_source(
        manifest["data"]["source"], manifest["dataset"], manifest.get("preprocess", "fit"), seed, progress=False
    )
    if data.facts["sha256"] != contents["sha256"]:
        raise DatasetError(
            f"{manifest['data']['source']}: its contents changed since {manifest['name']} was trained "
            f"(sha256 {data.facts['sha256'][:12]}..., the manifest says {contents['sha256'][:12]}...)"
        )
    return data
