"""The ``aeserve`` command: run the service, train, and call the five endpoints on image files and folders.

``aeserve serve`` and ``aeserve train`` import the service and the training code only when they run; the
other commands are the HTTP client's (httpx and numpy), with Pillow for writing PNG files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from aeserve import __version__
from aeserve.client import DEFAULT_URL, ApiError, Client, _image_count
from aeserve.results import ClassifyResult, ClusterResult, DenoiseResult, EncodeResult, ReconstructResult, Result

ENDPOINTS = ("encode", "reconstruct", "denoise", "classify", "cluster")
# The image formats the service reads; a folder is walked for these and for .npy arrays.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# python -m training's own commands; any other first argument of `aeserve train` is an option of its `train`.
TRAINING_COMMANDS = frozenset({"list", "train", "evaluate", "convert", "report", "-h", "--help"})


class UsageError(Exception):
    """A command line that names no usable input."""


@dataclass(frozen=True)
class Source:
    """One input: an image file, or a ``.npy`` array of images; ``name`` is how outputs are named after it."""

    path: Path
    name: Path
    array: bool


def collect(inputs: list[str]) -> tuple[list[Source], bool]:
    """The files named and those in the folders named (walked, sorted); and whether any folder was named."""
    sources, folder = [], False
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            folder = True
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.suffix.lower() in IMAGE_SUFFIXES | {".npy"}
            )
            if not found:
                raise UsageError(f"{given}: no image files (or .npy arrays) in this folder")
            sources += [Source(p, Path(path.name) / p.relative_to(path), p.suffix.lower() == ".npy") for p in found]
        elif path.is_file():
            sources.append(Source(path, Path(path.name), path.suffix.lower() == ".npy"))
        else:
            raise UsageError(f"{given}: no such file or folder")
    return sources, folder


class ProgressBar:
    """A one-line progress bar on stderr, redrawn in place."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None, width: int = 30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.shown = False

    def __call__(self, done: int) -> None:
        """Show ``done`` of the total."""
        filled = self.width * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} images")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """End the line."""
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True)
class Row:
    """One image's answer: where it came from, the fields to show, and the image or code to write."""

    source: str
    fields: dict[str, Any]
    output: np.ndarray | None
    name: Path


def _floats(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that give them back (as the service's JSON writes them)."""
    return [float(str(value)) for value in np.asarray(values, np.float32).reshape(-1)]


def _rows(result: Result, sources: list[tuple[str, Path]]) -> Iterator[Row]:
    """One row per image of ``result``; ``sources`` names each image (its file, or the array and index)."""
    common = {"model": result.model, "version": result.version}
    for i, (source, name) in enumerate(sources):
        if isinstance(result, EncodeResult):
            code = result.codes[i]
            yield Row(source, common | {"latent_dim": len(code), "codes": _floats(code)}, code, name)
        elif isinstance(result, ReconstructResult):
            fields = {"error": _floats(result.errors[i])[0], "in_distribution": bool(result.in_distribution[i])}
            yield Row(source, common | fields, result.images[i], name)
        elif isinstance(result, DenoiseResult):
            yield Row(source, common, result.images[i], name)
        elif isinstance(result, ClassifyResult):
            fields = {
                "label": int(result.labels[i]),
                "class_name": result.class_names[i],
                "confidence": _floats(result.confidences[i])[0],
                "probabilities": _floats(result.probabilities[i]),
            }
            yield Row(source, common | fields, None, name)
        elif isinstance(result, ClusterResult):
            cluster = int(result.clusters[i])
            fields = {
                "cluster": cluster,
                "label_hint": result.label_hints[i],
                result.score_kind: _floats(result.scores[i]),
            }
            yield Row(source, common | fields, None, name)


def _write(row: Row, out: Path, used: set[Path]) -> Path:
    """Write a row's image as PNG (or its code as ``.npy``) under ``out``, named after its source."""
    suffix = ".npy" if row.output.ndim == 1 else ".png"
    target = out / row.name.with_suffix(suffix)
    counter = 1
    while target in used:
        target = out / row.name.with_name(f"{row.name.stem}-{counter}{suffix}")
        counter += 1
    used.add(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(target, row.output, allow_pickle=False)
    else:
        from PIL import Image

        Image.fromarray(np.clip(row.output * 255 + 0.5, 0, 255).astype(np.uint8), "L").save(target)
    return target


def _shown(key: str, value: Any) -> str:
    if key == "codes":
        return "[" + ", ".join(f"{v:.3f}" for v in value[:3]) + (", …]" if len(value) > 3 else "]")
    if key in ("distances", "probabilities"):
        return f"{min(value):.4f}" if key == "distances" else f"{max(value):.4f}"
    if isinstance(value, float):
        return f"{value:.5f}" if key == "error" else f"{value:.4f}"
    return str(value)


def _table(rows: list[dict[str, Any]], stream: IO[str]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    headers = {"distances": "nearest distance", "probabilities": "probability"}
    if "label" in keys:  # classify: every class's probability is too long for a terminal line
        keys.remove("probabilities")
    cells = [[headers.get(k, k) for k in keys]] + [[_shown(k, row[k]) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    for line in cells:
        stream.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n")


def _infer(args: argparse.Namespace) -> int:
    sources, folder = collect(args.inputs)
    files = [s for s in sources if not s.array]
    arrays = {s.path: np.load(s.path, mmap_mode="r", allow_pickle=False) for s in sources if s.array}
    total = len(files) + sum(_image_count(a.shape) or 1 for a in arrays.values())
    show = args.progress if args.progress is not None else folder and sys.stderr.isatty()
    bar = ProgressBar(total, args.command) if show else None
    if bar is not None:
        bar(0)
    options: dict[str, Any] = {
        "dataset": args.dataset,
        "model": args.model,
        "version": args.model_version,
        "preprocess": args.preprocess,
    }
    if args.command == "denoise":
        options |= {"noise_std": args.noise_std, "seed": args.seed}
    rows: list[Row] = []
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        call: Callable[..., Result] = getattr(client, args.command)
        offset = 0

        def progress(done: int, _: int) -> None:
            if bar is not None:
                bar(offset + done)

        try:
            if files:
                result = call([s.path for s in files], progress=progress, **options)
                rows += _rows(result, [(str(s.path), s.name) for s in files])
                offset += len(files)
            for path, array in arrays.items():
                result = call(np.asarray(array), progress=progress, **options)
                name = next(s.name for s in sources if s.path == path)
                width = len(str(len(result) - 1))
                names = [(f"{path}[{i}]", name.with_name(f"{name.stem}-{i:0{width}d}")) for i in range(len(result))]
                rows += _rows(result, names)
                offset += len(result)
        finally:
            if bar is not None:
                bar.close()
    used: set[Path] = set()
    records = []
    for row in rows:
        record = {"source": row.source} | row.fields
        if args.out is not None and row.output is not None:
            record["out"] = str(_write(row, args.out, used))
        records.append(record)
    if args.json:
        for record in records:
            sys.stdout.write(json.dumps(record) + "\n")
    else:
        _table(records, sys.stdout)
    return 0


def _models(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        listing = client.models()
    if args.json:
        sys.stdout.write(json.dumps(listing) + "\n")
        return 0
    rows = []
    for entry in listing["models"]:
        rows.append(
            {
                "name": entry["name"],
                "version": entry.get("version", "-"),
                "status": entry["status"],
                "dataset": entry.get("dataset") or "-",
                "endpoints": ",".join(entry.get("endpoints") or []) or "-",
                "default for": ",".join(entry.get("default_for") or []) or "-",
            }
        )
    _table(rows, sys.stdout)
    limits = listing.get("limits")
    if limits:
        sys.stdout.write("limits: " + ", ".join(f"{k} {v}" for k, v in limits.items()) + "\n")
    return 0


def _serve(args: argparse.Namespace, extra: list[str]) -> int:
    """What ``make serve`` runs: ``python -m app.serve app.main:app --host ... --port ... [--workers ...]``."""
    from app import serve  # the service's own dependencies load here only

    os.environ.setdefault("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "20")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workers = ["--workers", str(args.workers)] if args.workers else []
    sys.argv = ["aeserve serve", "app.main:app", "--host", args.host, "--port", str(args.port), *workers, *extra]
    serve.main()
    return 0


def _train(argv: list[str]) -> int:
    """``python -m training ...``; ``aeserve train --all`` is ``python -m training train --all``."""
    from training.cli import main as training_main

    if argv and argv[0] not in TRAINING_COMMANDS:
        argv = ["train", *argv]
    return training_main(argv)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="aeserve", description="Serve, train and call MNIST autoencoders.")
    top.add_argument("--version", action="version", version=f"aeserve {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the models (what make serve runs); other options go to uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")

    commands.add_parser(
        "train",
        help="the training command line (python -m training): aeserve train --all, aeserve train evaluate, ...",
        add_help=False,
    )

    def client_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--url", default=os.environ.get("AESERVE_URL", DEFAULT_URL), help="the service (default $AESERVE_URL)"
        )
        sub.add_argument(
            "--api-key", default=os.environ.get("AESERVE_API_KEY"), help="its API key (default $AESERVE_API_KEY)"
        )
        sub.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
        sub.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    client_options(commands.add_parser("models", help="list the models served, their status and the defaults"))
    helps = {
        "encode": "latent codes (--out: one .npy per image)",
        "reconstruct": "reconstructions, errors, in-distribution (--out: PNG files)",
        "denoise": "denoised images (--out: PNG files)",
        "classify": "classes and confidences",
        "cluster": "clusters and label hints",
    }
    for name in ENDPOINTS:
        sub = commands.add_parser(name, help=helps[name])
        sub.add_argument(
            "inputs", nargs="+", metavar="FILE_OR_FOLDER", help="image files, .npy arrays, folders of them"
        )
        client_options(sub)
        sub.add_argument("--dataset", help="mnist or fashion-mnist (default mnist)")
        sub.add_argument("--model", help="a model name from aeserve models (default: the dataset's best)")
        sub.add_argument("--model-version", type=int, help="a version of the model named by --model")
        sub.add_argument("--preprocess", choices=("mnist", "none"), help="for image files (default mnist)")
        sub.add_argument("--out", type=Path, help="folder to write images (PNG) or codes (.npy) into")
        sub.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="a progress bar on stderr (default: for folders, on a terminal)",
        )
        if name == "denoise":
            sub.add_argument("--noise-std", type=float, help="add Gaussian noise of this std first (0..2)")
            sub.add_argument("--seed", type=int, help="seed of that noise")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aeserve`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return _train(argv[1:])
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra and args.command != "serve":
        top.error("unrecognised arguments: " + " ".join(extra))
    try:
        if args.command == "serve":
            return _serve(args, extra)
        if args.command == "models":
            return _models(args)
        return _infer(args)
    except ApiError as exc:
        print(f"aeserve: error: the service answered {exc.status}: {exc.message}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"aeserve: error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError) as exc:
        print(f"aeserve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
