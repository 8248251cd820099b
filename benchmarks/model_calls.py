"""The cost of one model call: every committed model's graph for each endpoint it serves
(``/encode`` runs the encoder alone), timed at a few batch sizes as the service calls them.

Run with ``python benchmarks/model_calls.py [--runtime litert|tensorflow]``; prints µs per call
and µs per image (median of the repeats), the part of a request the HTTP path cannot remove.
``--models`` times only the named models, ``--every-version`` every version served (rows
``name/version``), so versions of one model compare within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from app.registry import Registry
from app.runtimes import RUNTIMES

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--runtime", choices=RUNTIMES, default="litert")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads per call (AESERVE_MODEL_THREADS)")
    parser.add_argument("--models", nargs="+", help="only these models (default: every model)")
    parser.add_argument("--every-version", action="store_true", help="every served version, not only the newest")
    args = parser.parse_args()
    registry = Registry(MODELS_DIR, runtime=args.runtime, model_threads=args.threads, batching=None)
    registry.load_all()
    if args.every_version:
        models = [versions[v] for _, versions in sorted(registry.models.items()) for v in sorted(versions)]
    else:
        models = registry.latest_models()
    if args.models:
        unknown = set(args.models) - set(registry.models)
        if unknown:
            parser.error(f"no such model: {', '.join(sorted(unknown))} (served: {', '.join(sorted(registry.models))})")
        models = [m for m in models if m.name in args.models]
    header = " | ".join(f"batch {n}: µs/call (µs/image)" for n in args.sizes)
    print(f"| model | endpoint | {header} |\n|---|---|" + "---:|" * len(args.sizes))
    rng = np.random.default_rng(0)
    for model in models:
        label = f"{model.name}/{model.version}" if args.every_version else model.name
        for endpoint in model.endpoints:
            cells = []
            for size in args.sizes:
                images = rng.random((size, 28, 28), dtype=np.float32)
                model.predict(images, endpoint)
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model.predict(images, endpoint)
                    times.append(time.perf_counter() - start)
                per_call = statistics.median(times) * 1e6
                cells.append(f"{per_call:,.0f} ({per_call / size:,.1f})")
            print(f"| {label} | /{endpoint} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
