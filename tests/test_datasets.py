"""The IDX loader: well-formed files, every kind of fault, and the real datasets."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from conftest import write_idx, write_tiny_dataset

from training.datasets import (
    CLASS_NAMES,
    DATA_DIR_ENV,
    DatasetError,
    Split,
    load_dataset,
    read_idx,
    split_validation,
)


def test_loads_tiny_dataset_from_dataset_subfolder(tmp_path):
    xtr, _, xte, yte = write_tiny_dataset(tmp_path / "mnist")
    data = load_dataset("mnist", tmp_path, val_size=8, strict_counts=False, allow_download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 10)
    np.testing.assert_array_equal(data.test.images, xte)
    np.testing.assert_array_equal(data.test.labels, yte)
    # the validation split is carved from train: together they are train, without overlap
    merged = np.concatenate([data.train.images, data.val.images])
    assert sorted(map(bytes, merged)) == sorted(map(bytes, xtr))
    assert data.class_names == [str(d) for d in range(10)]
    assert set(data.checksums) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }


def test_environment_variable_names_the_folder(tmp_path, monkeypatch):
    write_tiny_dataset(tmp_path / "fashion-mnist")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    data = load_dataset("fashion-mnist", val_size=4, strict_counts=False, allow_download=False)
    assert data.source == str((tmp_path / "fashion-mnist").resolve())
    assert data.class_names[9] == "Ankle boot"


def test_folder_holding_the_files_directly_is_accepted(tmp_path):
    write_tiny_dataset(tmp_path)
    data = load_dataset("mnist", tmp_path, val_size=4, strict_counts=False, allow_download=False)
    assert len(data.test) == 10


def test_nothing_found_names_every_folder_searched(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DatasetError, match="no local copy") as info:
        load_dataset("mnist", tmp_path, allow_download=False)
    assert str(tmp_path / "mnist") in str(info.value)


def test_missing_file_is_named(tmp_path):
    write_tiny_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\.gz: file not found"):
        load_dataset("mnist", tmp_path, strict_counts=False, allow_download=False)


def test_wrong_magic_number(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((3, 28, 28), np.uint8), magic=2049)
    with pytest.raises(DatasetError, match="magic number 2049, expected 2051"):
        read_idx(path, 2051)


def test_truncated_data(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((3, 28, 28), np.uint8))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path, 2051)


def test_not_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(DatasetError, match="not a readable gzip file"):
        read_idx(path, 2051)


def test_wrong_image_size(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DatasetError, match="32x32, expected 28x28"):
        read_idx(path, 2051)


def test_wrong_count_when_strict(tmp_path):
    write_tiny_dataset(tmp_path / "mnist")
    with pytest.raises(DatasetError, match="holds 40 items, expected 60000"):
        load_dataset("mnist", tmp_path, allow_download=False)


def test_labels_out_of_range(tmp_path):
    write_tiny_dataset(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, np.uint8))
    with pytest.raises(DatasetError, match="labels hold 12"):
        load_dataset("mnist", tmp_path, strict_counts=False, allow_download=False)


def test_validation_split_is_seeded():
    split = Split(np.arange(100 * 784, dtype=np.uint8).reshape(100, 28, 28) % 251, np.arange(100) % 10)
    a_train, a_val = split_validation(split, 10, seed=1)
    _, b_val = split_validation(split, 10, seed=1)
    _, c_val = split_validation(split, 10, seed=2)
    np.testing.assert_array_equal(a_val.images, b_val.images)
    assert not np.array_equal(a_val.images, c_val.images)
    assert len(a_train) == 90


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_datasets(data_dir, name):
    data = load_dataset(name, data_dir, allow_download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (55_000, 5_000, 10_000)
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1:] == (28, 28)
    assert data.class_names == CLASS_NAMES[name]
    all_train_labels = np.concatenate([data.train.labels, data.val.labels])
    counts = np.bincount(all_train_labels, minlength=10)
    if name == "mnist":  # the counts the datasets' README gives
        assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    else:
        assert counts.tolist() == [6000] * 10
    sums = dict(reversed(line.split()) for line in (data_dir / "SHA256SUMS").read_text().splitlines())
    for file, digest in data.checksums.items():
        assert sums[f"{name}/{file}"] == digest
        assert hashlib.sha256((data_dir / name / file).read_bytes()).hexdigest() == digest


def test_keras_fallback_reads_the_mnist_npz_without_pickle(tmp_path, monkeypatch):
    import keras

    from training import datasets

    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    good = tmp_path / "mnist.npz"
    np.savez(good, x_train=images, y_train=np.array([3, 4]), x_test=images[:1], y_test=np.array([5]))
    fetched = []

    def get_file(fname, origin, **kwargs):
        fetched.append((fname, origin, kwargs.get("file_hash")))
        return str(good)

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    train, test = datasets._keras_download("mnist")
    assert fetched == [("mnist.npz", datasets.KERAS_ORIGIN + "mnist.npz", datasets.KERAS_MNIST_SHA256)]
    np.testing.assert_array_equal(train.images, images)
    assert train.labels.tolist() == [3, 4] and test.labels.tolist() == [5]

    np.savez(good, x_train=np.array([object()], dtype=object), y_train=np.array([1]), x_test=images, y_test=[1])
    with pytest.raises(ValueError, match="allow_pickle"):
        datasets._keras_download("mnist")
