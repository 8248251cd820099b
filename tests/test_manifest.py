"""The manifest says which config a version was trained with when it is not the recipe's own."""

from __future__ import annotations

import copy
import json
import shutil

from conftest import MODELS_DIR

from training import zoo
from training.export import architecture_description, config_overrides


def test_config_overrides_lists_changed_and_added_keys_by_dotted_path():
    defaults = {"lr": 0.001, "epochs": 16, "augment": {"shift": 0.1, "flip": False}}
    config = {"lr": 0.0003, "epochs": 16, "augment": {"shift": 0.1, "flip": True}, "extra": 1}
    assert config_overrides(defaults, config) == {"lr": 0.0003, "augment.flip": True, "extra": 1}
    assert config_overrides(defaults, copy.deepcopy(defaults)) == {}


def test_description_is_the_recipes_own_for_its_own_config():
    spec = zoo.get("mnist-conv-denoiser")
    assert architecture_description(spec, copy.deepcopy(spec.config)) == spec.architecture


def test_description_flags_a_config_that_departs_from_the_recipe():
    spec = zoo.get("mnist-conv-denoiser")
    config = copy.deepcopy(spec.config) | {"extra_convs": 1, "warm_start": None}
    description = architecture_description(spec, config)
    assert description.startswith(spec.architecture)
    assert "trained with extra_convs=1, warm_start=null instead of the recipe's defaults" in description


def test_each_recipes_committed_version_is_described_by_the_recipe_and_its_config():
    for spec in zoo.SPECS:
        manifest = json.loads((MODELS_DIR / spec.name / str(spec.version) / "manifest.json").read_text())
        description = architecture_description(spec, manifest["training"]["config"])
        assert manifest["architecture"]["description"] == description, spec.name


def test_denoising_figures_are_measured_at_the_issues_noise():
    # export, `python -m training evaluate` and the report's picture all read Spec.noise_std:
    # the recipe's task (std 0.6 for both denoisers), never a training run's override
    denoisers = [spec for spec in zoo.SPECS if "denoise" in spec.endpoints]
    assert len(denoisers) == 2
    assert all(spec.noise_std == 0.6 for spec in denoisers)


def test_evaluate_records_the_recipes_floors_in_a_stale_manifest(tmp_path):
    from training.cli import main
    from training.export import floor_records

    shutil.copytree(MODELS_DIR / "mnist-kmeans", tmp_path / "mnist-kmeans")
    path = tmp_path / "mnist-kmeans" / "1" / "manifest.json"
    committed = json.loads(path.read_text())
    stale = copy.deepcopy(committed)
    stale["reference"]["floors"][0] |= {"value": 0.99, "holds": False}
    path.write_text(json.dumps(stale, indent=2) + "\n")

    assert main(["evaluate", "mnist-kmeans", "--models-dir", str(tmp_path), "--record-floors"]) == 0
    recorded = json.loads(path.read_text())
    assert recorded["reference"]["floors"] == floor_records(zoo.get("mnist-kmeans"), committed["metrics"])
    assert recorded == committed  # nothing else moved: metrics, files and their checksums


def test_the_reports_issue_7_table_is_what_the_committed_manifests_give():
    from training.evaluate import read_manifest
    from training.registry import committed_models
    from training.report import _issue_7_table

    manifests = {m["name"]: m for m in map(read_manifest, committed_models(MODELS_DIR))}
    rows = _issue_7_table(manifests)
    report = (MODELS_DIR / "REPORT.md").read_text().splitlines()
    assert [row for row in rows if row not in report] == [], "models/REPORT.md is stale: python -m training report"
    goals = {(s.dataset, f.describe_goal()) for s in zoo.SPECS for f in s.floors if f.source.startswith(zoo.ISSUE_7)}
    assert len(rows) == 2 + len(goals)  # header, rule, one row per goal
    (ood,) = [row for row in rows if "ood_auroc" in row]
    assert "| none of the serving systems offer it |" in ood  # a floor's own figures, not its spec's MSE ones
