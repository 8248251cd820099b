"""``python -m training``: list, train, evaluate and report the model zoo."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
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

    train = sub.add_parser(
        "train",
        parents=[common],
        help="train and export recipes, or a template on your data (train TEMPLATE --data PATH --name NAME)",
    )
    train.add_argument("names", nargs="*", help="recipe names, or one template with --data (see `list`)")
    train.add_argument(
        "--data",
        help="a template's data: a folder of images (class sub-folders, or flat; train/ and test/ splits), "
        ".npz, .npy, IDX files, or mnist / fashion-mnist",
    )
    train.add_argument("--name", help="the model's name (models/<name>/<version>/)")
    train.add_argument("--dataset", help="the dataset it is served as (default: the stem of --data)")
    train.add_argument(
        "--preprocess",
        choices=("fit", "mnist"),
        default="fit",
        help="how image files become 28x28: fit (grey, fitted inside 28x28 keeping the aspect ratio, padded with "
        "the background) or mnist (MNIST's ink centring); uploads to the model get the same",
    )
    train.add_argument("--all", action="store_true", help="train every recipe")
    train.add_argument(
        "--version",
        type=int,
        default=None,
        help="version folder to export to (default: each recipe's own, see `list`; a template run's next free one)",
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

    report = sub.add_parser(
        "report", parents=[common], help="write models/REPORT.md and its figures, or one model's report (NAME)"
    )
    report.add_argument("names", nargs="*", help="models trained from a template: write <models-dir>/<name>/REPORT.md")
    report.add_argument("--output", type=Path, default=None, help="report file (default: <models-dir>/REPORT.md)")
    return parser


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _next_version(model_dir: Path) -> int:
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _train_template(args) -> int:
    """``train TEMPLATE --data PATH --name NAME``: check the data, train, export a new version, print its metrics."""
    from training import templates, zoo
    from training.datasets import DatasetError
    from training.sources import dataset_name, load_source

    if len(args.names) != 1 or args.all:
        raise SystemExit("--data trains one template: train TEMPLATE --data PATH --name NAME")
    template = templates.get(args.names[0])
    if not args.name:
        raise SystemExit("a template run needs --name NAME (the served model's name)")
    if not NAME_PATTERN.match(args.name):
        raise SystemExit(f"--name {args.name!r}: letters, digits, '.', '_' and '-', starting with a letter or digit")
    if args.name in zoo.BY_NAME:
        raise SystemExit(f"--name {args.name}: a recipe's name; choose another")
    dataset = args.dataset or dataset_name(args.data)
    if not NAME_PATTERN.match(dataset):
        raise SystemExit(f"--dataset {dataset!r}: use letters, digits, '.', '_' and '-'")
    config = templates.default_config(template)
    aliases = templates.ALIASES.get(template.name, {})
    for assignment in args.set:
        key, sep, value = assignment.partition("=")
        _set_override(config, f"{aliases.get(key, key)}{sep}{value}")
    model_dir = args.models_dir / args.name
    version = args.version if args.version is not None else _next_version(model_dir)
    if version < 1:
        raise SystemExit(f"--version {version}: versions start at 1")
    if (model_dir / str(version)).exists():
        raise SystemExit(f"{model_dir / str(version)} exists; a version is never overwritten (choose another)")

    start = time.perf_counter()
    try:
        data = load_source(args.data, dataset, args.preprocess, args.seed, args.data_dir)
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}") from None
    if template.needs_labels and not data.labelled:
        raise SystemExit(
            f"error: {args.data}: the {template.name} template needs labels, and this source has none "
            "(put the images in one sub-folder per class, or give the .npz a labels array)"
        )
    if template.name == "kmeans" and config.get("n_clusters") is None:
        config["n_clusters"] = len(data.class_names) if data.labelled else 10
    print(
        f"== {args.name}: {template.name} on {dataset} ({data.source}): {len(data.train)} training, {len(data.val)} "
        f"validation, {len(data.test)} test images"
        + (f", {len(data.class_names)} classes" if data.labelled else ", unlabelled")
        + f"; read in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    spec = template.spec(args.name, dataset, config, version)
    return _run(args, [(spec, config, version)], {dataset: data}, replace=False)


def _train(args) -> int:
    if args.data is not None:
        return _train_template(args)
    from training import templates, zoo

    if args.names and args.names[0] in templates.TEMPLATES and args.names[0] not in zoo.BY_NAME:
        raise SystemExit(f"the template {args.names[0]} needs --data PATH and --name NAME")
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
    return _run(args, runs, {})


def _run(args, runs: list, datasets: dict, replace: bool = True) -> int:
    """Train and export each ``(spec, config, version)``; print each one's test metrics and export path."""
    import keras
    import tensorflow as tf

    from training.datasets import load_dataset
    from training.evaluate import outlier_images
    from training.export import export
    from training.procedures import Context

    ctx = Context(seed=args.seed, epoch_scale=args.epoch_scale, models_dir=args.models_dir)
    tf.config.experimental.enable_op_determinism()
    summary, total = [], time.perf_counter()
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
        folder = export(spec, trained, data, ctx, args.models_dir, version, wall, outliers, replace=replace)
        manifest = json.loads((folder / "manifest.json").read_text())
        floors = manifest["reference"]["floors"]
        status = "ok" if all(f["holds"] for f in floors) else "BELOW FLOOR"
        print(f"== {spec.name}: trained in {wall:.1f} s, exported to {folder} [{status}]", flush=True)
        print("   test " + json.dumps(manifest["metrics"]["test"]), flush=True)
        summary.append((spec.name, wall, status))
    if len(summary) > 1:  # one run ends with its own test metrics and export path
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
        if manifest["name"] not in zoo.BY_NAME:  # a template run has no floors: `report NAME` shows its figures
            continue
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
    from training.evaluate import read_manifest
    from training.export import add_litert, write_manifest
    from training.registry import committed_models
    from training.sources import data_of_manifest

    datasets = {}
    for folder in committed_models(args.models_dir, args.names):
        manifest = read_manifest(folder)
        if manifest["dataset"] not in datasets:
            datasets[manifest["dataset"]] = data_of_manifest(manifest, args.data_dir)
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
    from training.report import write_model_report, write_report

    if args.names:
        for name in args.names:
            print(f"wrote {write_model_report(args.models_dir, name, args.data_dir)}")
        return 0
    output = args.output or args.models_dir / "REPORT.md"
    write_report(args.models_dir, output, args.data_dir)
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    if args.command == "list":
        from training import templates, zoo

        print("templates (train TEMPLATE --data PATH --name NAME [--set key=value ...]):")
        for template in templates.TEMPLATES.values():
            needs = ", needs labels" if template.needs_labels else ""
            settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in template.config.items() if not isinstance(v, dict))
            print(f"  {template.name:16} {', '.join(template.endpoints):28} {template.description}{needs}")
            print(f"  {'':16} settings: {settings}")
            if template.recipes():
                print(f"  {'':16} applied to mnist / fashion-mnist as: {', '.join(template.recipes())}")
        print("\nrecipes (train NAME ...):")
        for spec in zoo.SPECS:
            floors = "; ".join(f.describe() for f in spec.floors)
            of = f" [template {spec.template}]" if spec.template else ""
            print(f"  {spec.name:34} v{spec.version:<3} {', '.join(spec.endpoints):28} {floors}{of}")
        return 0
    commands = {"train": _train, "evaluate": _evaluate, "convert": _convert, "report": _report}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
