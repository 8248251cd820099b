"""Installed size and import time for each kind of user of the package.

- server: the wheel with its dependencies, what ``pip install aeserve`` (or ``pip install .``) gives;
  its import is ``app.main``, which uvicorn imports (it builds the app).
- client: the wheel without its dependencies plus what the Python client imports (httpx and numpy); its
  import is the ``aeserve`` client package when the wheel has one, else those two modules.

Run with ``python benchmarks/installs.py [--repeats 7]``. It builds the wheel, installs each side into a fresh
virtual environment (without pip or setuptools of its own: the running pip installs into it) in a temporary
folder, and prints the size of each one's site-packages, its number of distributions and the median import
time (wall and CPU) of a fresh interpreter started in an empty folder, the two sides alternating.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DEPENDENCIES = ("httpx", "numpy")
# Wall and CPU seconds of the import: CPU time hardly moves when other processes share the cores.
TIMER = (
    "import time; w, c = time.perf_counter(), time.process_time(); import {0}; "
    "print(time.perf_counter() - w, time.process_time() - c)"
)


def site_packages(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python3*/site-packages")
    return found


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def make_venv(folder: Path, *requirements: str, no_deps: tuple[str, ...] = ()) -> Path:
    """A fresh venv at ``folder`` with ``requirements`` (and ``no_deps`` without their dependencies); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check"]
    # (pip warns that the wheel's own dependencies are missing from the client's side: they are meant to be)
    for args in (["--no-deps", *no_deps] if no_deps else [], list(requirements)):
        done = subprocess.run([*pip, *args], capture_output=True, text=True) if args else None
        if done is not None and done.returncode:
            sys.exit(done.stderr)
    return python


def import_seconds(python: Path, modules: str, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds to import ``modules`` in a fresh interpreter; NaN where they are not installed."""
    done = subprocess.run([str(python), "-c", TIMER.format(modules)], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        return float("nan"), float("nan")
    wall, cpu = done.stdout.split()[-2:]
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="imports per side (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(ROOT)],
            check=True,
            capture_output=True,
        )
        (wheel,) = (work / "dist").glob("*.whl")
        has_client = "aeserve/__init__.py" in zipfile.ZipFile(wheel).namelist()
        client_import = "aeserve" if has_client else ", ".join(CLIENT_DEPENDENCIES)
        sides = {
            "server": (make_venv(work / "server", str(wheel)), "app.main"),
            "client": (make_venv(work / "client", *CLIENT_DEPENDENCIES, no_deps=(str(wheel),)), client_import),
        }
        empty = work / "empty"
        empty.mkdir()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        both = "server, client's import"  # the client's modules where the server's are installed too
        times[both] = []
        for _ in range(args.repeats):
            for name, (python, modules) in sides.items():
                times[name].append(import_seconds(python, modules, empty))
            times[both].append(import_seconds(sides["server"][0], client_import, empty))
        print(f"wheel {wheel.name}: {wheel.stat().st_size / 2**10:.0f} KiB; client import: {client_import}")
        print(f"{'install':<24} {'site-packages MiB':>18} {'distributions':>14} {'import wall s':>14} {'CPU s':>7}")
        for name in times:
            size, count = "", ""
            if name in sides:
                packages = site_packages(sides[name][0].parent.parent)
                size, count = f"{size_mib(packages):.0f}", len(list(packages.glob("*.dist-info")))
            wall, cpu = (statistics.median(t[i] for t in times[name]) for i in (0, 1))
            if wall == wall:  # not NaN: the modules are installed on that side
                print(f"{name:<24} {size:>18} {count:>14} {wall:>14.3f} {cpu:>7.3f}")


if __name__ == "__main__":
    main()
