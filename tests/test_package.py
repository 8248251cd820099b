"""The installable package: what the wheel and the sdist hold, the service run from a wheel outside the
checkout, the models folder taken from the working directory, and the version from pyproject.toml.

The wheel and sdist are built by ``python -m build`` (isolated: pip finds setuptools in the indexes and
caches this machine is configured with); the install test puts the wheel and its dependencies into a fresh
virtual environment and starts the server from an empty directory, so nothing of the checkout is on its path.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import MODELS_DIR, ROOT, ready_app

from scripts import local_server

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SEVEN = ROOT / "examples" / "seven.png"
# Neither the test's own venv nor an outer make reaches the commands run here.
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS", "MAKELEVEL") and not k.startswith("AESERVE_")
}
# What may be in a wheel or sdist besides the packages: never tests, models, data or caches.
FORBIDDEN = ("tests/", "models/", "examples/", "benchmarks/", "scripts/", "deploy/", "__pycache__", ".pyc")


def package_files() -> set[str]:
    """Every file the packages of pyproject.toml ship: their modules and their package data, relative to ROOT."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    tops = [pattern.rstrip("*") for pattern in setuptools["packages"]["find"]["include"]]
    files = {
        path.relative_to(ROOT).as_posix()
        for top in tops
        for suffix in ("*.py", "*.pyi")
        for path in (ROOT / top).rglob(suffix)
        if "__pycache__" not in path.parts
    }
    for package, patterns in setuptools.get("package-data", {}).items():
        folder = ROOT / package.replace(".", "/")
        files |= {p.relative_to(ROOT).as_posix() for pattern in patterns for p in folder.glob(pattern) if p.is_file()}
    return files


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, as ``python -m build`` makes them (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_wheel_holds_the_packages_and_their_data_and_nothing_else(dist):
    (wheel,) = dist.glob(f"aeserve-{VERSION}-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = package_files()
    assert {"app/static/index.html", "app/static/app.js", "app/static/app.css", "app/routers/docs.py"} <= expected
    assert expected <= names, sorted(expected - names)
    metadata = f"aeserve-{VERSION}.dist-info/"
    assert {n for n in names if not n.startswith(metadata)} == expected
    assert not [n for n in names if any(bad in n for bad in FORBIDDEN)]
    # the docs' Swagger UI and ReDoc files come with the install, as a dependency
    requires = zipfile.ZipFile(wheel).read(metadata + "METADATA").decode()
    assert "Requires-Dist: fastapi-offline" in requires


@pytest.mark.slow
def test_the_sdist_holds_the_packages_and_the_project_files_and_nothing_else(dist):
    (sdist,) = dist.glob(f"aeserve-{VERSION}.tar.gz")
    top = f"aeserve-{VERSION}/"
    with tarfile.open(sdist) as archive:
        names = {m.name.removeprefix(top) for m in archive.getmembers() if m.isfile()}
    expected = package_files() | {"pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "PKG-INFO", "setup.cfg"}
    assert expected <= names, sorted(expected - names)
    assert {n for n in names if not n.startswith("aeserve.egg-info/")} == expected
    assert not [n for n in names if any(bad in n for bad in FORBIDDEN)]


def serve_log_lines(log: Path, word: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if word in line]


@pytest.mark.slow
def test_the_wheel_serves_from_an_empty_directory(dist, tmp_path, monkeypatch):
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    # no pip of its own: this pip installs into it (faster, and it reuses this pip's cache)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(wheel),
        ],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [python, "-c", "import app, importlib.metadata as m; print(app.__file__, m.version('aeserve'))"],
        cwd=empty,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    module, version = where.stdout.split()
    assert Path(module).is_relative_to(venv) and version == VERSION

    monkeypatch.setattr(sys, "executable", str(python))  # local_server starts `sys.executable -m app.serve`
    log_path = tmp_path / "served.log"
    with log_path.open("w") as log:
        env = CLEAN_ENV | {"AESERVE_MODELS_DIR": str(MODELS_DIR)}
        process, base, _ = local_server.start(env=env, log=log, cwd=empty)
        try:
            with httpx.Client(base_url=base, timeout=30) as http:
                page = http.get("/")
                assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
                assert http.get("/static/app.js").status_code == 200
                answer = http.post("/classify", files={"file": ("seven.png", SEVEN.read_bytes(), "image/png")})
                assert answer.status_code == 200, answer.text
                assert answer.json()["predictions"][0]["label"] == 7
                assert http.get("/models").json()["aeserve_version"] == VERSION
                assert http.get("/docs").status_code == 200
                assert http.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        finally:
            local_server.stop(process)

    # without a models folder: ./models of the empty working directory, which does not exist
    log_path = tmp_path / "no-models.log"
    with log_path.open("w") as log:
        process, base, _ = local_server.start(env=CLEAN_ENV, log=log, cwd=empty, wait_for="/healthz")
        try:
            with httpx.Client(base_url=base, timeout=30) as http:
                ready = http.get("/readyz")
                for _ in range(100):
                    if "loading" not in ready.json()["error"]:
                        break
                    time.sleep(0.1)
                    ready = http.get("/readyz")
        finally:
            local_server.stop(process)
    assert ready.status_code == 503
    reason = ready.json()["error"]
    assert "AESERVE_MODELS_DIR" in reason and "does not exist" in reason
    (line,) = serve_log_lines(log_path, "AESERVE_MODELS_DIR")
    assert reason in line and str(empty / "models") in line
    assert "Traceback" not in log_path.read_text()


def test_the_models_folder_defaults_to_models_in_the_working_directory(tmp_path, monkeypatch):
    from app.main import create_app

    shutil.copytree(MODELS_DIR / "fashion-mnist-tied", tmp_path / "models" / "fashion-mnist-tied")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AESERVE_MODELS_DIR", raising=False)
    app = create_app()
    app.state.registry.load_all()
    assert app.state.registry.ready and set(app.state.registry.models) == {"fashion-mnist-tied"}


@pytest.mark.anyio
@pytest.mark.parametrize("folder", ["absent", "empty"])
async def test_no_models_is_one_log_line_and_the_same_reason_at_readyz(folder, tmp_path, caplog):
    models_dir = tmp_path / folder
    if folder == "empty":
        models_dir.mkdir()
    with caplog.at_level(logging.ERROR, logger="aeserve"):
        app = ready_app(models_dir=models_dir)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    reason = ready.json()["error"]
    assert reason.startswith("no models to serve") and "AESERVE_MODELS_DIR" in reason
    assert ("does not exist" if folder == "absent" else "holds no") in reason
    assert str(tmp_path) not in reason  # the path is the log's only
    (record,) = [r for r in caplog.records if r.name == "aeserve"]
    assert record.getMessage() == f"{reason} [AESERVE_MODELS_DIR is {models_dir.resolve()}]"


@pytest.mark.anyio
async def test_the_version_is_pyprojects_everywhere_the_service_shows_it(client, committed_app):
    import app

    assert app.__version__ == importlib.metadata.version("aeserve") == VERSION
    assert (await client.get("/models")).json()["aeserve_version"] == VERSION
    assert committed_app.openapi()["info"]["version"] == VERSION


def test_the_image_is_labelled_with_pyprojects_version():
    # `make image` passes pyproject.toml's version to docker build, which labels the image with it
    dry = subprocess.run(["make", "--no-print-directory", "-n", "image"], cwd=ROOT, env=CLEAN_ENV, capture_output=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.decode().split() == [
        "docker", "build", "--build-arg", f"VERSION={VERSION}", "-t", f"aeserve:{VERSION}", "."
    ]  # fmt: skip
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    assert VERSION not in dockerfile.replace("aeserve:" + VERSION, "")  # written in pyproject.toml only
