"""``python -m training``: list, train, evaluate and report the model zoo."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def _set_override(config: dict, assignment: str) -> None:
    """Apply ``a.b=value`` (value parsed as JSON when it parses) to a nested config."""
    key, _, raw = assignment.partition("=")
    if not _:
        raise SystemExit(f"--set expects key=value, got {assignment!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *path, leaf = key.split(".")
    node = config
    for part in path:
        node = node[part]
    if leaf not in node:
        raise SystemExit(f"--set {key}: no such config key (known: {', '.join(node)})")
    node[leaf] = value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the recipes, their endpoints and floors")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        help="folder with mnist/ and fashion-mnist/ IDX files "
        "(default: $AESERVE_DATA_DIR, then system locations, then the Keras download)",
    )
    common.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)

    train = sub.add_parser("train", parents=[common], help="train and export recipes")
    train.add_argument("names", nargs="*", help="model names (see `list`)")
    train.add_argument("--all", action="store_true", help="train every recipe")
    train.add_argument(
        "--version", type=int, default=None, help="version folder to export to (default: each recipe's own, see `list`)"
    )
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--epoch-scale", type=float, default=1.0, help="scale every epoch count (quick runs)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value of the (single) recipe trained, e.g. epochs=5",
    )

    evaluate = sub.add_parser(
        "evaluate",
        parents=[common],
        help="re-evaluate committed models against their floors, through model.tflite as the service runs them",
    )
    evaluate.add_argument("names", nargs="*")
    evaluate.add_argument(
        "--record-floors",
        action="store_true",
        help="write each recipe's floors, as they now stand in training/zoo.py, into its latest version's manifest "
        "(after a floor changed; whether each holds is judged on the manifest's own metrics)",
    )

    convert = sub.add_parser(
        "convert",
        parents=[common],
        help="compile exported models to model.tflite (checked on the test set) and update their manifests",
    )
    convert.add_argument("names", nargs="*", help="model names (default: every model under --models-dir)")

    report = sub.add_parser("report", parents=[common], help="write models/REPORT.md and its figures")
    report.add_argument("--output", type=Path, default=None, help="report file (default: <models-dir>/REPORT.md)")
    return parser


def _train(args) -> int:
    import keras
    import tensorflow as tf

    from training import zoo
    from training.datasets import load_dataset
    from training.evaluate import outlier_images
    from training.export import export
    from training.procedures import Context

    names = list(zoo.BY_NAME) if args.all else args.names
    if not names:
        raise SystemExit("name one or more models, or pass --all; `python -m training list` shows them")
    specs = [zoo.get(n) for n in names]
    if args.set and len(specs) != 1:
        raise SystemExit("--set applies to one recipe at a time")
    runs = []
    for spec in specs:
        config = copy.deepcopy(spec.config)
        for assignment in args.set:
            _set_override(config, assignment)
        version = spec.version if args.version is None else args.version
        source, _, number = (config.get("warm_start") or "").partition("/")
        if source == spec.name and number.isdigit() and int(number) >= version:
            raise SystemExit(f"{spec.name} starts from its version {source}/{number}; export it as a later --version")
        runs.append((spec, config, version))
    ctx = Context(seed=args.seed, epoch_scale=args.epoch_scale, models_dir=args.models_dir)
    tf.config.experimental.enable_op_determinism()
    datasets, summary, total = {}, [], time.perf_counter()
    for spec, config, version in runs:
        if spec.dataset not in datasets:
            datasets[spec.dataset] = load_dataset(spec.dataset, args.data_dir, seed=args.seed)
        data = datasets[spec.dataset]
        print(f"== {spec.name} ({spec.architecture})", flush=True)
        keras.utils.set_random_seed(args.seed)
        start = time.perf_counter()
        trained = spec.train(data, config, ctx)
        trained.notes["config"] = config
        wall = time.perf_counter() - start
        outliers = outlier_images(spec.config, args.data_dir)
        folder = export(spec, trained, data, ctx, args.models_dir, version, wall, outliers)
        manifest = json.loads((folder / "manifest.json").read_text())
        floors = manifest["reference"]["floors"]
        status = "ok" if all(f["holds"] for f in floors) else "BELOW FLOOR"
        print(f"== {spec.name}: trained in {wall:.1f} s, exported to {folder} [{status}]", flush=True)
        print("   test " + json.dumps(manifest["metrics"]["test"]), flush=True)
        summary.append((spec.name, wall, status))
    print(f"\n{'model':34} {'wall s':>8}  floors")
    for name, wall, status in summary:
        print(f"{name:34} {wall:8.1f}  {status}")
    print(f"total {time.perf_counter() - total:.1f} s")
    return 0 if all(s == "ok" for *_, s in summary) else 1


def _evaluate(args) -> int:
    from training import zoo
    from training.datasets import load_dataset
    from training.evaluate import evaluate, outlier_images, read_manifest, served_predict
    from training.export import floor_records, write_manifest
    from training.registry import committed_models

    failed = 0
    datasets = {}
    print(f"{'model':34} {'metric':28} {'manifest':>10} {'now':>10}  floor")
    for folder in committed_models(args.models_dir, args.names):
        manifest = read_manifest(folder)
        spec = zoo.get(manifest["name"])
        if spec.dataset not in datasets:
            datasets[spec.dataset] = load_dataset(spec.dataset, args.data_dir)
        metrics = evaluate(
            served_predict(folder),
            datasets[spec.dataset],
            spec.noise_std,
            outlier_images(spec.config, args.data_dir),
        )
        for floor in spec.floors:
            holds = floor.holds(metrics)
            failed += not holds
            key = f"{floor.split} {floor.metric}"
            print(
                f"{spec.name:34} {key:28} {manifest['metrics'][floor.split][floor.metric]:10.4f} "
                f"{metrics[floor.split][floor.metric]:10.4f}  {floor.describe()} {'ok' if holds else 'FAILS'}"
            )
        records = floor_records(spec, manifest["metrics"])
        if args.record_floors and manifest["reference"]["floors"] != records:
            manifest["reference"]["floors"] = records
            write_manifest(folder, manifest)
            print(f"{spec.name:34} floors recorded in {folder / 'manifest.json'}")
    return 1 if failed else 0


def _convert(args) -> int:
    from training.datasets import load_dataset
    from training.evaluate import read_manifest
    from training.export import add_litert, write_manifest
    from training.registry import committed_models

    datasets = {}
    for folder in committed_models(args.models_dir, args.names):
        manifest = read_manifest(folder)
        if manifest["dataset"] not in datasets:
            datasets[manifest["dataset"]] = load_dataset(manifest["dataset"], args.data_dir)
        start = time.perf_counter()
        add_litert(folder, manifest, datasets[manifest["dataset"]].test.pixels())
        write_manifest(folder, manifest)
        litert = manifest["litert"]
        print(
            f"{manifest['name']:34} {time.perf_counter() - start:5.1f} s  {', '.join(litert['signatures'])}; "
            f"largest difference from the SavedModel {litert['largest_difference']:.2g}",
            flush=True,
        )
    return 0


def _report(args) -> int:
    from training.report import write_report

    output = args.output or args.models_dir / "REPORT.md"
    write_report(args.models_dir, output, args.data_dir)
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    if args.command == "list":
        from training import zoo

        for spec in zoo.SPECS:
            floors = "; ".join(f.describe() for f in spec.floors)
            print(f"{spec.name:34} v{spec.version:<3} {', '.join(spec.endpoints):28} {floors}")
        return 0
    commands = {"train": _train, "evaluate": _evaluate, "convert": _convert, "report": _report}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
