"""Your own data: every source ``--data`` reads, the fit rule, the split, every bad-data error, and each
template trained on small data this file writes, exported, and served by the real app on its folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import write_idx
from helpers import as_json, multipart, png_bytes
from PIL import Image
from test_browser import browser, open_page  # noqa: F401 - the browser fixture, shared

from imageprep import fit_28
from training.cli import main
from training.datasets import DatasetError
from training.sources import load_source

CLASSES = ("circle", "square", "cross")


def shape_image(kind: int, rng: np.random.Generator, size: tuple[int, int] | None = None) -> np.ndarray:
    """A dark circle, square or cross on a light background, of a random size (uint8)."""
    h, w = size or tuple(int(v) for v in rng.integers(20, 60, 2))
    image = np.full((h, w), 225 + int(rng.integers(0, 20)), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = h / 2 + rng.normal(0, 1), w / 2 + rng.normal(0, 1), min(h, w) / 3
    if kind == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    elif kind == 1:
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    else:
        mask = (abs(yy - cy) < r / 4) | (abs(xx - cx) < r / 4)
    image[mask] = 20
    return image


def write_png_folder(folder: Path, per_class: int = 20, seed: int = 0) -> Path:
    """Three class sub-folders of PNGs, sizes from 20 to 60 pixels, some of them RGB or with alpha."""
    rng = np.random.default_rng(seed)
    for kind, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = Image.fromarray(shape_image(kind, rng))
            image = image.convert(("L", "RGB", "RGBA")[i % 3])
            image.save(folder / name / f"{i:03d}.png")
    return folder


def small_arrays(n: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """28x28 shapes as uint8 (light on dark, like MNIST) and their labels 0..2."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = np.stack([255 - shape_image(int(k), rng, (28, 28)) for k in labels])
    return images, labels


def exported(models_dir: Path) -> list[Path]:
    return sorted(p for p in models_dir.rglob("*") if p.is_file()) if models_dir.exists() else []


# ---------------------------------------------------------------- reading


def test_a_folder_of_class_folders_is_labelled_converted_and_split_80_10_10(tmp_path):
    write_png_folder(tmp_path / "shapes")
    data = load_source(str(tmp_path / "shapes"), progress=False)
    assert data.name == "shapes" and data.class_names == sorted(CLASSES)
    assert (len(data.train), len(data.val), len(data.test)) == (48, 6, 6)
    pixels = data.train.pixels()
    assert pixels.dtype == np.float32 and pixels.shape == (48, 28, 28)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert set(np.unique(np.concatenate([data.train.labels, data.val.labels, data.test.labels]))) == {0, 1, 2}
    assert data.facts["files"] == 60 and data.facts["kind"] == "image folder"
    assert data.facts["bytes"] == sum(p.stat().st_size for p in (tmp_path / "shapes").rglob("*.png"))
    assert data.split["seed"] == 42 and (data.split["train"], data.split["val"], data.split["test"]) == (48, 6, 6)
    # the same seed gives the same split, another seed another
    again = load_source(str(tmp_path / "shapes"), progress=False)
    np.testing.assert_array_equal(again.test.pixels(), data.test.pixels())
    other = load_source(str(tmp_path / "shapes"), seed=7, progress=False)
    assert not np.array_equal(other.test.pixels(), data.test.pixels())
    assert other.facts["sha256"] == data.facts["sha256"]


def test_the_fit_rule_keeps_the_aspect_ratio_and_pads_with_the_background():
    grey = np.full((20, 60), 0.9, np.float32)
    grey[5:15, 10:50] = 0.1
    fitted = fit_28(grey)
    assert fitted.shape == (28, 28)
    # 60 wide becomes 28, 20 high becomes 9: rows above and below are the background
    np.testing.assert_allclose(fitted[:9], 0.9, atol=1e-6)
    np.testing.assert_allclose(fitted[-9:], 0.9, atol=1e-6)
    assert fitted[14, 14] < 0.2
    same = np.random.default_rng(0).random((28, 28), dtype=np.float32)
    np.testing.assert_array_equal(fit_28(same), same)


def test_train_and_test_folders_are_the_splits(tmp_path):
    write_png_folder(tmp_path / "src" / "train", per_class=18)
    write_png_folder(tmp_path / "src" / "test", per_class=4, seed=5)
    data = load_source(str(tmp_path / "src"), progress=False)
    assert len(data.test) == 12 and len(data.train) + len(data.val) == 54
    assert "test split" in data.split["rule"]


def test_a_flat_folder_is_unlabelled(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "flat").mkdir()
    for i in range(50):
        Image.fromarray(shape_image(i % 3, rng)).save(tmp_path / "flat" / f"{i}.png")
    data = load_source(str(tmp_path / "flat"), progress=False)
    assert not data.labelled and data.class_names == [] and data.train.labels is None


def test_npz_uint8_float_and_a_channel_axis_with_labels_and_class_names(tmp_path):
    images, labels = small_arrays()
    np.savez(tmp_path / "a.npz", images=images, labels=labels, class_names=np.array(["o", "x", "+"]))
    np.savez(tmp_path / "b.npz", images=(images / 255.0).astype(np.float32)[..., None], labels=labels)
    a, b = load_source(str(tmp_path / "a.npz")), load_source(str(tmp_path / "b.npz"))
    assert a.class_names == ["o", "x", "+"] and b.class_names == ["0", "1", "2"]
    np.testing.assert_allclose(a.test.pixels(), b.test.pixels(), atol=1e-6)
    assert a.facts["sha256"] != b.facts["sha256"] and a.facts["bytes"] == (tmp_path / "a.npz").stat().st_size


def test_npy_is_unlabelled(tmp_path):
    np.save(tmp_path / "shapes.npy", small_arrays()[0])
    data = load_source(str(tmp_path / "shapes.npy"))
    assert data.name == "shapes" and not data.labelled and len(data.train) == 48


@pytest.mark.parametrize("gz", [True, False])
def test_idx_pair_and_quadruple(tmp_path, gz):
    images, labels = small_arrays(80)
    ext = ".gz" if gz else ""
    for prefix, part in (("train", slice(0, 60)), ("t10k", slice(60, 80))):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images[part])
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels[part].astype(np.uint8))
        if not gz:
            for kind in ("images-idx3", "labels-idx1"):
                import gzip

                gzipped = tmp_path / f"{prefix}-{kind}-ubyte.gz"
                (tmp_path / f"{prefix}-{kind}-ubyte").write_bytes(gzip.decompress(gzipped.read_bytes()))
                gzipped.unlink()
    pair = load_source(str(tmp_path / f"train-images-idx3-ubyte{ext}"))
    assert pair.name == "train" and pair.class_names == ["0", "1", "2"] and len(pair.test) == 6
    quadruple = load_source(str(tmp_path))
    assert len(quadruple.test) == 20 and len(quadruple.train) + len(quadruple.val) == 60
    assert quadruple.facts["files"] == 4


def test_many_files_are_decoded_by_worker_processes_in_file_order(tmp_path, monkeypatch):
    from training import sources

    write_png_folder(tmp_path / "shapes", per_class=20)
    serial = load_source(str(tmp_path / "shapes"), progress=False)
    monkeypatch.setattr(sources, "PARALLEL_FROM", 10)
    monkeypatch.setattr(sources, "CHUNK", 16)
    parallel = load_source(str(tmp_path / "shapes"), workers=2, progress=False)
    np.testing.assert_array_equal(parallel.train.pixels(), serial.train.pixels())
    assert parallel.facts == serial.facts


# ---------------------------------------------------------------- bad data: one clear error, nothing exported


def _labelled_npz(path: Path, n: int = 60, **arrays) -> str:
    images, labels = small_arrays(n)
    np.savez(path, **({"images": images, "labels": labels} | arrays))
    return str(path)


def _unreadable(tmp: Path) -> tuple[str, str]:
    folder = write_png_folder(tmp / "shapes")
    (folder / "square" / "007.png").write_bytes(b"this is text, not an image")
    return str(folder), "square/007.png: is not an image file Pillow can read"


def _truncated(tmp: Path) -> tuple[str, str]:
    folder = write_png_folder(tmp / "shapes")
    whole = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (folder / "circle" / "003.png").write_bytes(whole[: len(whole) // 2])
    return str(folder), "circle/003.png: is truncated or corrupt"


def _no_images(tmp: Path) -> tuple[str, str]:
    np.savez(tmp / "x.npz", pictures=small_arrays()[0])
    return str(tmp / "x.npz"), "x.npz: holds no 'images' array (it holds pictures)"


def _label_count(tmp: Path) -> tuple[str, str]:
    return _labelled_npz(tmp / "x.npz", labels=np.arange(59) % 3), "x.npz: 59 labels for 60 images"


def _too_few(tmp: Path) -> tuple[str, str]:
    return _labelled_npz(tmp / "x.npz", n=49), "x.npz: holds 49 images; at least 50 are needed"


def _one_class(tmp: Path) -> tuple[str, str]:
    return _labelled_npz(tmp / "x.npz", labels=np.zeros(60, int)), "every image has the same label (0)"


def _nan(tmp: Path) -> tuple[str, str]:
    images = small_arrays()[0] / 255.0
    images[12, 3, 4] = np.nan
    return _labelled_npz(tmp / "x.npz", images=images), "x.npz: images hold NaN or infinite values (first in image 12)"


def _out_of_range(tmp: Path) -> tuple[str, str]:
    images = small_arrays()[0] / 255.0
    images[30] *= 255.0
    return _labelled_npz(tmp / "x.npz", images=images), "x.npz: images hold floats outside 0..1"


def _unlabelled_classifier(tmp: Path) -> tuple[str, str]:
    np.save(tmp / "x.npy", small_arrays()[0])
    return str(tmp / "x.npy"), "the conv-classifier template needs labels, and this source has none"


BAD = {
    "unreadable image": _unreadable,
    "truncated image": _truncated,
    "npz without images": _no_images,
    "label count differs": _label_count,
    "fewer than 50 images": _too_few,
    "one class": _one_class,
    "NaN floats": _nan,
    "out-of-range floats": _out_of_range,
    "classifier on unlabelled data": _unlabelled_classifier,
}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_clear_error_before_training_and_nothing_is_exported(case, tmp_path, capsys):
    data, message = BAD[case](tmp_path)
    models = tmp_path / "models"
    with pytest.raises(SystemExit) as raised:
        main(["train", "conv-classifier", "--data", data, "--name", "bad", "--models-dir", str(models)])
    assert message in str(raised.value.code)
    assert str(raised.value.code).startswith("error: ")
    assert "epoch" not in capsys.readouterr().out  # nothing trained
    assert exported(models) == []


def test_the_reader_raises_a_dataset_error_naming_the_file(tmp_path):
    data, _ = _truncated(tmp_path)
    with pytest.raises(DatasetError, match=r"circle/003\.png: is truncated or corrupt"):
        load_source(data, progress=False)


def test_an_existing_version_is_never_overwritten(tmp_path):
    models = tmp_path / "models"
    (models / "mine" / "1").mkdir(parents=True)
    (models / "mine" / "1" / "manifest.json").write_text("{}")
    args = ["train", "stacked", "--data", _labelled_npz(tmp_path / "x.npz"), "--name", "mine"]
    with pytest.raises(SystemExit, match="mine/1 exists; a version is never overwritten"):
        main([*args, "--models-dir", str(models), "--version", "1"])
    assert exported(models) == [models / "mine" / "1" / "manifest.json"]
    assert (models / "mine" / "1" / "manifest.json").read_text() == "{}"


def test_a_recipes_name_and_an_unknown_setting_are_refused(tmp_path):
    data = _labelled_npz(tmp_path / "x.npz")
    with pytest.raises(SystemExit, match="a recipe's name"):
        main(["train", "conv-small", "--data", data, "--name", "mnist-conv-small", "--models-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such config key"):
        main(["train", "conv-small", "--data", data, "--name", "x", "--set", "layers=3", "--models-dir", str(tmp_path)])
    assert exported(tmp_path / "x") == []


# ---------------------------------------------------------------- every template, trained, exported, served

RUNS = [
    # template, source, dataset, settings
    ("conv-small", "png", "shapes", ["epochs=1"]),
    ("conv-classifier", "png", "shapes", ["pretrain.epochs=1", "finetune.epochs=1"]),
    ("stacked", "npz", "blobs", ["epochs=1", "sizes=[64,16]"]),
    ("conv-denoiser", "npy", "noise", ["epochs=1"]),
    ("kmeans", "idx", "marks", ["epochs=1", "clusters=3", "kmeans_n_init=2"]),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every template trained for an epoch on small data written here, exported into one models folder."""
    root = tmp_path_factory.mktemp("own")
    images, labels = small_arrays(60)
    sources = {
        "png": str(write_png_folder(root / "shapes")),
        "npz": _labelled_npz(root / "blobs.npz"),
        "npy": str(root / "noise.npy"),
        "idx": str(root / "marks-images-idx3-ubyte.gz"),
    }
    np.save(root / "noise.npy", images)
    write_idx(root / "marks-images-idx3-ubyte.gz", images)
    write_idx(root / "marks-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    models = root / "models"
    for template, source, dataset, settings in RUNS:
        sets = [a for s in settings for a in ("--set", s)]
        name = f"{dataset}-{template}"
        args = ["train", template, "--data", sources[source], "--name", name, "--models-dir", str(models)]
        assert main([*args, "--dataset", dataset, "--seed", "3", *sets]) == 0
    return models


@pytest.mark.slow
def test_every_template_exports_a_manifest_of_its_data(trained):
    for template, source, dataset, _ in RUNS:
        folder = trained / f"{dataset}-{template}" / "1"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["dataset"] == dataset and manifest["template"] == template
        assert manifest["preprocess"] == "fit"
        contents, split = manifest["data"]["contents"], manifest["data"]["split"]
        assert len(contents["sha256"]) == 64 and contents["bytes"] > 0
        assert split["test"] == manifest["metrics"]["test"]["examples"] == 6
        assert (split["train"], split["val"]) == (48, 6)
        if source != "npy":
            assert len(manifest["class_names"]) == 3
        else:
            assert manifest["class_names"] == []
    classifier = json.loads((trained / "shapes-conv-classifier" / "1" / "manifest.json").read_text())
    assert classifier["class_names"] == sorted(CLASSES) and "accuracy" in classifier["metrics"]["test"]
    kmeans = json.loads((trained / "marks-kmeans" / "1" / "manifest.json").read_text())
    assert kmeans["clusters"]["n_clusters"] == 3 and "cluster_acc" in kmeans["metrics"]["test"]


@pytest.mark.slow
def test_a_template_run_prints_each_epoch_and_ends_with_its_test_metrics_and_path(tmp_path, capsys):
    models = tmp_path / "models"
    args = ["train", "stacked", "--data", _labelled_npz(tmp_path / "x.npz"), "--name", "x", "--models-dir"]
    assert main([*args, str(models), "--set", "epochs=2", "--set", "sizes=[32,8]"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "epoch" in line and "loss" in line]
    assert len(lines) == 2 and all("val loss" in line and "elapsed" in line and "left" in line for line in lines)
    last = out.strip().splitlines()
    assert f"exported to {models / 'x' / '1'}" in last[-2] and last[-1].startswith('   test {"examples": 6, "mse": ')
    # a second run takes the next version; the first stays as it was
    first = (models / "x" / "1" / "manifest.json").read_bytes()
    assert main([*args, str(models), "--set", "epochs=1", "--set", "sizes=[32,8]"]) == 0
    assert (models / "x" / "2" / "manifest.json").exists()
    assert (models / "x" / "1" / "manifest.json").read_bytes() == first


@pytest.mark.slow
def test_report_of_a_template_run(trained):
    assert main(["report", "shapes-conv-classifier", "--models-dir", str(trained)]) == 0
    report = (trained / "shapes-conv-classifier" / "REPORT.md").read_text()
    assert "Dataset `shapes`, classes circle, cross, square" in report
    assert (trained / "shapes-conv-classifier" / "report" / "shapes-conv-classifier-confusion.png").exists()


@pytest.fixture(scope="module")
def served(trained):
    """The real app (uvicorn) on the folder the templates were exported into; yields its base URL."""
    from scripts.local_server import start, stop

    process, base, _ = start(env={"AESERVE_MODELS_DIR": str(trained)})
    try:
        yield base
    finally:
        stop(process)


@pytest.mark.slow
def test_the_real_app_serves_every_template_on_its_folder(served):
    base = served
    listing = httpx.get(f"{base}/models").json()
    assert listing["datasets"] == ["blobs", "marks", "noise", "shapes"]
    assert {m["name"] for m in listing["models"]} == {f"{d}-{t}" for t, _, d, _ in RUNS}
    assert all(m["status"] == "ready" for m in listing["models"])
    image = png_bytes(shape_image(0, np.random.default_rng(9)))
    array = small_arrays(2)[0]
    for template, _, dataset, _ in RUNS:
        name = f"{dataset}-{template}"
        (model,) = [m for m in listing["models"] if m["name"] == name]
        for endpoint in model["endpoints"]:
            by_file = httpx.post(f"{base}/{endpoint}", params={"model": name}, **multipart(image), timeout=30)
            assert by_file.status_code == 200, (name, endpoint, by_file.text)
            assert by_file.json()["model"] == name
            by_json = httpx.post(f"{base}/{endpoint}", params={"dataset": dataset}, json=as_json(array))
            assert by_json.status_code == 200, (name, endpoint, by_json.text)
    # an uploaded file gets the rule the model was trained with (its manifest's preprocess, fit)
    assert {m["preprocess"] for m in listing["models"]} == {"fit"}
    grey = np.asarray(Image.open(io.BytesIO(image)).convert("L"), np.float32) / 255.0
    params = {"model": "shapes-conv-small"}
    by_file = httpx.post(f"{base}/encode", params=params, **multipart(image)).json()
    by_rule = httpx.post(f"{base}/encode", params=params, json={"images": [fit_28(grey).tolist()]}).json()
    np.testing.assert_allclose(by_file["codes"], by_rule["codes"], rtol=1e-5, atol=1e-5)
    answer = httpx.post(f"{base}/classify", params={"dataset": "shapes"}, **multipart(image)).json()
    assert answer["model"] == "shapes-conv-classifier"
    assert answer["predictions"][0]["class_name"] in CLASSES
    # a dataset without a model for the endpoint: 404 naming the datasets that have one
    refused = httpx.post(f"{base}/classify", params={"dataset": "blobs"}, json=as_json(array))
    assert refused.status_code == 404
    assert refused.json()["error"] == "no model serves /classify for dataset blobs; datasets with one: shapes"
    unknown = httpx.post(f"{base}/encode", params={"dataset": "mnist"}, json=as_json(array))
    assert unknown.status_code == 404 and "datasets: blobs, marks, noise, shapes" in unknown.json()["error"]


@pytest.mark.slow
def test_the_page_offers_the_served_datasets(served, browser):  # noqa: F811 - the shared fixture
    page, errors = open_page(browser, served)
    options = page.eval_on_selector_all("#dataset option", "options => options.map(o => o.value)")
    assert options == ["blobs", "marks", "noise", "shapes"]
    page.select_option("#dataset", "shapes")
    models = page.eval_on_selector_all("#model-classify option", "options => options.map(o => o.value)")
    assert models == ["shapes-conv-classifier"]
    assert errors == []


def test_preprocess_mnist_centres_the_ink_as_the_service_does(tmp_path):
    from app.imaging import mnist_style

    write_png_folder(tmp_path / "shapes", per_class=17)
    data = load_source(str(tmp_path / "shapes"), preprocess="mnist", progress=False)
    assert data.preprocess == "mnist"
    pixels = np.concatenate([data.train.pixels(), data.val.pixels(), data.test.pixels()])
    # dark shapes on a light page become light ink on black, centred, with a black border (MNIST's 20x20 box)
    assert pixels[:, :2].max() == 0.0 and pixels[:, :, -2:].max() == 0.0 and pixels.max() > 0.9
    first = sorted((tmp_path / "shapes").rglob("*.png"))[0]
    grey = np.asarray(Image.open(first).convert("L"), np.float32) / 255.0
    assert any(np.array_equal(mnist_style(grey), image) for image in pixels)
