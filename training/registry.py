"""Finding exported models on disk (the training side's view of ``models/``)."""

from __future__ import annotations

from pathlib import Path


def latest_version(model_dir: Path) -> Path | None:
    """The highest-numbered version folder of one model, if any."""
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def committed_models(models_dir: Path, names: list[str] | None = None) -> list[Path]:
    """The latest version folder of every model under ``models_dir`` (or of ``names`` only)."""
    folders = []
    for model_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if names and model_dir.name not in names:
            continue
        version = latest_version(model_dir)
        if version is not None and (version / "manifest.json").exists():
            folders.append(version)
    return folders
