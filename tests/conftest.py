"""Shared fixtures: the datasets beside the checkout, tiny IDX files, quiet TensorFlow."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"


def shared_data_dir() -> Path | None:
    """``$AESERVE_DATA_DIR`` or ``../shared/datasets`` beside the checkout, when it holds MNIST."""
    for candidate in (os.environ.get("AESERVE_DATA_DIR"), ROOT.parent / "shared" / "datasets"):
        if candidate and (Path(candidate) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets; missing data fails under CI (where it must be there) and skips elsewhere."""
    found = shared_data_dir()
    if found is None:
        message = "datasets not found: set AESERVE_DATA_DIR to the folder holding mnist/ and fashion-mnist/"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """Write ``array`` (uint8) as a gzip IDX file, as the MNIST distribution does."""
    magic = magic if magic is not None else 0x800 + array.ndim
    header = struct.pack(">i", magic) + struct.pack(">" + "i" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_tiny_dataset(folder: Path, n_train: int = 40, n_test: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A small but well-formed dataset in IDX gzip form; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    for name, array in zip(names, arrays, strict=True):
        write_idx(folder / name, array)
    return arrays


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def ready_app(**overrides):
    """The real app over ``models/`` (or ``overrides['models_dir']``), its models loaded and warmed."""
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(**({"models_dir": MODELS_DIR} | overrides)))
    app.state.registry.load_all()
    return app


@pytest.fixture(scope="session")
def committed_app():
    """The service over the committed models with default settings."""
    return ready_app()


@pytest.fixture
async def client(committed_app):
    import httpx

    transport = httpx.ASGITransport(app=committed_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture(scope="session")
def mnist_test(data_dir):
    """MNIST test images (uint8) and labels."""
    from training.datasets import load_dataset

    data = load_dataset("mnist", data_dir, allow_download=False)
    return data.test.images, data.test.labels
