"""``models/REPORT.md`` and its figures, made from the committed models alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from training import zoo
from training.datasets import Dataset, load_dataset
from training.evaluate import TEST_NOISE_SEED, load_saved_model, noisy_images, read_manifest
from training.metrics import confusion_matrix
from training.registry import committed_models

FIGURES = "report"
HEADLINE = {
    "mse": "test MSE",
    "psnr_db": "test PSNR dB",
    "rounded_accuracy": "rounded accuracy",
    "accuracy": "test accuracy",
    "cluster_acc": "ACC",
    "nmi": "NMI",
    "ood_auroc": "OOD AUROC",
}
# Which endpoint a floor's metric speaks for, in issue 7's table.
ENDPOINT_OF_METRIC = {
    "accuracy": "/classify",
    "mse": "/reconstruct",
    "psnr_db": "/denoise",
    "cluster_acc": "/cluster",
    "ood_auroc": "/reconstruct in_distribution",
}


def _grid(rows: list[np.ndarray], row_labels: list[str], path: Path, title: str, cmap: str = "gray") -> None:
    """Draw rows of equally sized images, one labelled row each."""
    n_cols = max(len(r) for r in rows)
    fig = Figure(figsize=(n_cols * 0.9, len(rows) * 0.95 + 0.4))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for i, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(row[j], cmap=cmap, vmin=None if cmap != "gray" else 0, vmax=None if cmap != "gray" else 1)
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _confusion(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    n = len(class_names)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _tsne(codes: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    from sklearn.manifold import TSNE

    points = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(codes)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    for k, name in enumerate(class_names):
        mask = labels == k
        ax.scatter(points[mask, 0], points[mask, 1], s=3, label=name, color=matplotlib.colormaps["tab10"](k))
    ax.legend(markerscale=4, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def model_figures(folder: Path, manifest: dict, data: Dataset, out_dir: Path) -> list[tuple[str, str]]:
    """Draw every figure one model's outputs allow; returns (caption, relative path) pairs."""
    name, figures = manifest["name"], []
    predict = load_saved_model(folder)
    test = data.test.pixels()
    sample = test[:12]
    outputs = predict(sample)

    def save(kind: str) -> Path:
        path = out_dir / f"{name}-{kind}.png"
        figures.append((kind.replace("-", " "), f"{FIGURES}/{path.name}"))
        return path

    if "reconstruction" in outputs:
        _grid(
            [sample, outputs["reconstruction"]],
            ["original", "reconstruction"],
            save("reconstructions"),
            f"{name}: test images and their reconstructions",
        )
    if "denoised" in outputs:
        # the noise its PSNR is measured at: the recipe's, or a template run's own
        noise_std = zoo.get(name).noise_std if name in zoo.BY_NAME else manifest["training"]["config"]["noise_std"]
        noisy = noisy_images(test, noise_std, TEST_NOISE_SEED)[:12]
        _grid(
            [sample, noisy, predict(noisy)["denoised"]],
            ["clean", f"noisy σ={noise_std}", "denoised"],
            save("denoising"),
            f"{name}: clean / noisy (clipped) / denoised",
        )
    if "probabilities" in outputs:
        predicted = predict(test)["probabilities"].argmax(axis=1)
        _confusion(
            confusion_matrix(data.test.labels, predicted, len(data.class_names)),
            data.class_names,
            save("confusion"),
            f"{name}: confusion matrix on the test set",
        )
    if manifest.get("code_image_shape"):
        side = manifest["code_image_shape"]
        codes = outputs["codes"].reshape(len(sample), *side)
        _grid(
            [sample, codes],
            ["image", f"code {side[0]}x{side[1]}"],
            save("codes"),
            f"{name}: the {manifest['latent_dim']}-d code drawn as an image",
            cmap="viridis",
        )
    if "cluster" in outputs:
        clusters = predict(test)["cluster"]
        hints = manifest["clusters"]["label_hints"]
        rows = [test[clusters == k][:12] for k in range(manifest["clusters"]["n_clusters"])]
        _grid(
            rows,
            [f"{k}: {hints[k]}" for k in range(len(rows))],
            save("clusters"),
            f"{name}: test images per cluster (row label: cluster and its label hint)",
        )
    if name == "fashion-mnist-stacked":
        n = 3000
        codes = predict(test[:n])["codes"]
        _tsne(
            codes,
            data.test.labels[:n],
            data.class_names,
            save("tsne"),
            f"{name}: t-SNE of the 30-d codes of {n} test images",
        )
    return figures


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _issue_7_table(manifests: dict[str, dict]) -> list[str]:
    """Issue 7's table: per goal, the published figures, the best recipe model and ours, from the manifests."""
    rows = [
        "| endpoint | goal | published figures | recipe (best RECIPES.md model) | ours | meets |",
        "|---|---|---|---|---|---|",
    ]
    recipe_specs = [
        s for s in zoo.SPECS if s.name in manifests and not any(f.source.startswith(zoo.ISSUE_7) for f in s.floors)
    ]
    # one row per goal; where several models aim at it, the best is "ours" and the others are named
    by_goal: dict[tuple[str, str], list[tuple[zoo.Spec, zoo.Floor]]] = {}
    for spec in zoo.SPECS:
        if spec.name not in manifests:
            continue
        for floor in (f for f in spec.floors if f.source.startswith(zoo.ISSUE_7)):
            by_goal.setdefault((spec.dataset, floor.describe_goal()), []).append((spec, floor))
    for entries in by_goal.values():
        sign = 1 if entries[0][1].higher_is_better else -1
        entries.sort(key=lambda e: -sign * manifests[e[0].name]["metrics"]["test"][e[1].metric])
        spec, floor = entries[0]
        test = manifests[spec.name]["metrics"]["test"]
        endpoint = ENDPOINT_OF_METRIC[floor.metric].split()[0].lstrip("/")
        candidates = [
            (manifests[r.name]["metrics"]["test"][floor.metric], r.name)
            for r in recipe_specs
            if r.dataset == spec.dataset
            and endpoint in r.endpoints  # a conv autoencoder's clean PSNR is no denoising figure
            and floor.metric in manifests[r.name]["metrics"]["test"]
        ]
        if floor.metric == "mse":  # the goal is for codes of at most 32 numbers
            candidates = [c for c in candidates if manifests[c[1]]["latent_dim"] <= 32]
        recipe = "—"
        if candidates:
            value, name = (max if floor.higher_is_better else min)(candidates)
            recipe = f"{_fmt(value)} (`{name}`)"
        ours = f"{_fmt(test[floor.metric])} (`{spec.name}`)"
        if floor.metric == "cluster_acc":
            ours += f", NMI {_fmt(test['nmi'])}"
        others = [f"`{s.name}` {_fmt(manifests[s.name]['metrics']['test'][f.metric])}" for s, f in entries[1:]]
        if others:
            ours += f"; also {', '.join(others)}"
        rows.append(
            f"| {ENDPOINT_OF_METRIC[floor.metric]} {spec.dataset} | {floor.describe_goal()} | "
            f"{floor.published or spec.reference} | "
            f"{recipe} | {ours} | {'yes' if floor.meets_goal(manifests[spec.name]['metrics']) else '**no**'} |"
        )
    return rows


def write_report(models_dir: Path, output: Path, data_dir: str | None = None) -> None:
    """Write the report: the recipe table, per-model metrics and figures."""
    out_dir = output.parent / FIGURES
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, Dataset] = {}
    summary, sections, manifests = [], [], {}
    for folder in committed_models(models_dir):
        manifest = read_manifest(folder)
        if manifest["name"] not in zoo.BY_NAME:  # a template run: `python -m training report NAME`
            continue
        manifests[manifest["name"]] = manifest
        spec = zoo.get(manifest["name"])
        if spec.dataset not in datasets:
            datasets[spec.dataset] = load_dataset(spec.dataset, data_dir)
        metrics = manifest["metrics"]
        ours = "; ".join(f"{f.split} {f.metric} {_fmt(metrics[f.split][f.metric])}" for f in spec.floors)
        holds = all(f.holds(metrics) for f in spec.floors)
        summary.append(
            f"| `{spec.name}` | {spec.reference} | {'; '.join(f.describe() for f in spec.floors)} | {ours} | "
            f"{'yes' if holds else '**no**'} |"
        )
        lines = [f"## `{spec.name}` (version {manifest['version']})", "", spec.architecture + ".", ""]
        lines += [
            f"Serves: {', '.join(manifest['endpoints'])}. Latent size {manifest['latent_dim']}; "
            f"{manifest['architecture']['parameters']:,} parameters; trained in "
            f"{manifest['training']['wall_time_s']} s (seed {manifest['training']['seed']}).",
            "",
        ]
        keys = [k for k in metrics["test"] if k != "examples"]
        lines += ["| split | " + " | ".join(HEADLINE.get(k, k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
        for split in ("val", "test"):
            cells = (_fmt(metrics[split][k]) if k in metrics[split] else "—" for k in keys)
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
        lines.append("")
        variants = manifest["training"]["notes"].get("variants")
        if variants:
            lines += ["| variant | architecture | val MSE | test MSE | served |", "|---|---|---|---|---|"]
            for v, d in variants.items():
                served = "yes" if v == manifest["training"]["notes"]["selected_variant"] else ""
                lines.append(f"| {v} | {d['architecture']} | {d['val_mse']:.4f} | {d['test_mse']:.4f} | {served} |")
            lines.append("")
        if "in_distribution" in manifest:
            ind = manifest["in_distribution"]
            lines += [
                f"`in_distribution`: per-image MSE ≤ {ind['threshold']:.4f} (the training set's "
                f"{ind['threshold_quantile']:.0%} quantile); {ind['test_false_positive_rate']:.2%} of "
                "clean test images fall above it."
                + (
                    f" It flags {ind['outlier_detection_rate']:.2%} of the {ind['outlier_dataset']} images; "
                    f"their reconstruction errors tell them from the test images with AUROC "
                    f"{metrics['test']['ood_auroc']:.4f}."
                    if "outlier_dataset" in ind
                    else ""
                ),
                "",
            ]
        if "clusters" in manifest:
            lines += [
                "Cluster label hints (majority training class): "
                + ", ".join(f"{k}→{h}" for k, h in enumerate(manifest["clusters"]["label_hints"])),
                "",
            ]
        for caption, rel in model_figures(folder, manifest, datasets[spec.dataset], out_dir):
            lines += [f"![{spec.name} {caption}]({rel})", ""]
        sections.append("\n".join(lines))
    header = [
        "# Model report",
        "",
        "Generated by `make report` (`python -m training report`) from the committed models in `models/`;",
        "every figure is computed through the exported SavedModel's `serving_default` signature on the",
        "test split (10,000 images), the validation split being the seeded 5,000 images carved from train.",
        "The service runs each model's `model.tflite` (LiteRT), which the export checked against the",
        "SavedModel on the whole test split (the manifest's `litert` entry) and which CI scores again",
        "against the floors (`python -m training evaluate` does the same).",
        "The denoiser is scored on test images with Gaussian noise (std 0.6, seed "
        f"{TEST_NOISE_SEED}) clipped to 0..1. PSNR is 10·log10(1/MSE) of the mean MSE.",
        "",
        "| model | reference figure | floor checked in CI | ours | meets |",
        "|---|---|---|---|---|",
        *summary,
        "",
        "## Beyond the recipes (issue 7)",
        "",
        "Goals of issue 7 on the test split through the served models; the recipe column is the best",
        "RECIPES.md model of the same dataset on the same metric (for `/reconstruct`, codes of at most 32",
        "numbers). Clustering is fitted on training images without labels.",
        "",
        *_issue_7_table(manifests),
        "",
    ]
    output.write_text("\n".join(header) + "\n" + "\n".join(sections))


def write_model_report(models_dir: Path, name: str, data_dir: str | None = None) -> Path:
    """One model's report, ``<models_dir>/<name>/REPORT.md`` and its figures beside it in ``report/``.

    The model's data is read again as its manifest says (a ``--data`` source must hold the same
    contents); its metrics are the manifest's, computed at export on the held-out test split.
    """
    from training.registry import latest_version
    from training.sources import data_of_manifest

    folder = latest_version(models_dir / name) if (models_dir / name).is_dir() else None
    if folder is None or not (folder / "manifest.json").exists():
        raise SystemExit(f"no exported version of {name} under {models_dir}")
    manifest = read_manifest(folder)
    data = data_of_manifest(manifest, data_dir)
    out_dir = models_dir / name / FIGURES
    out_dir.mkdir(parents=True, exist_ok=True)
    info, metrics = manifest["data"], manifest["metrics"]
    lines = [
        f"# `{name}` (version {manifest['version']})",
        "",
        f"{manifest.get('template') or manifest['recipe']}: {manifest['architecture']['description']}.",
        "",
        f"Dataset `{manifest['dataset']}`"
        + (f", classes {', '.join(manifest['class_names'])}" if manifest["class_names"] else ", unlabelled")
        + f". Serves {', '.join('/' + e for e in manifest['endpoints'])}; latent size {manifest['latent_dim']}; "
        f"{manifest['architecture']['parameters']:,} parameters; trained in {manifest['training']['wall_time_s']} s "
        f"(seed {manifest['training']['seed']}).",
        "",
    ]
    if "contents" in info:
        c = info["contents"]
        lines += [
            f"Source: {c['kind']}, {c['files']} file(s), {c['bytes']:,} bytes, sha256 of its contents "
            f"`{c['sha256']}`; images made by the `{manifest.get('preprocess')}` rule.",
            "",
        ]
    if "split" in info:
        s = info["split"]
        lines += [f"Split: {s['rule']} (seed {s['seed']}): {s['train']} train, {s['val']} val, {s['test']} test.", ""]
    keys = [k for k in metrics["test"] if k != "examples"]
    lines += ["| split | examples | " + " | ".join(HEADLINE.get(k, k) for k in keys) + " |"]
    lines += ["|---|---|" + "---|" * len(keys)]
    for split in ("val", "test"):
        cells = (_fmt(metrics[split][k]) if k in metrics[split] else "—" for k in keys)
        lines.append(f"| {split} | {metrics[split]['examples']} | " + " | ".join(cells) + " |")
    lines.append("")
    for caption, rel in model_figures(folder, manifest, data, out_dir):
        lines += [f"![{name} {caption}]({rel})", ""]
    output = models_dir / name / "REPORT.md"
    output.write_text("\n".join(lines))
    return output
