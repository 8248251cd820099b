"""Where a request's time goes: py-spy samples of the service under one of the benchmark's loads.

Starts the service as ``benchmarks/run.py`` does, drives it with wrk (1 thread, 8 connections)
and records the worker with py-spy (``pip install -e '.[dev]'``) meanwhile; then groups the
event-loop thread's samples by the innermost frame it recognises and prints the share of each
group, and how often the model thread was computing. Run:
``python benchmarks/profile.py [--load "PNG upload /classify"] [--env KEY=VALUE]``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.run import loads, wrk
from scripts import local_server

# (group, substrings of py-spy frame names); the innermost frame that matches names the group.
GROUPS = (
    ("model calls on the loop", ("SignatureRunner", "LiteRtModel.function", "ServedModel.compute")),
    (
        "reading the body into images (JSON, npy, multipart, decoding, preprocessing)",
        ("parse_json", "_regular_images", "parse_npy", "parse_multipart", "split_multipart", "image_file",
         "decode_image", "mnist_style", "plain_28", "check_batch", "read_images"),
    ),
    (
        "the answer's body (JSON, npy, PNG)",
        ("json_body", "image_body", "npy_body", "encode (app/", "reconstruct (app/", "denoise (app/",
         "classify (app/", "classify.<locals>", "cluster (app/", "cluster.<locals>"),
    ),
    ("the batcher", ("Batcher.", "ModelThread.run", "_settle")),
    (
        "request id, metrics, access line",
        ("Observability", "Metrics.", "JsonFormatter", "logging/", "prometheus_client"),
    ),
    (
        "query, headers, negotiation, model lookup",
        ("parse_params", "negotiate", "Registry.resolve", "read_body", "InferenceApp._answer"),
    ),
    ("uvicorn: parsing HTTP", ("data_received", "on_url", "on_header", "on_body", "on_message_complete",
                               "_start_asgi_task")),
    ("uvicorn: writing the answer", ("RequestResponseCycle.send", "on_response_complete", "_send (app/")),
    ("ASGI plumbing (uvicorn's task, proxy headers, dispatch)", ("run_asgi", "ProxyHeaders", "Service.__call__",
                                                                  "InferenceApp.__call__")),
)
LOOP = "the event loop itself (uvloop: sockets, scheduling, waiting)"


def group_samples(raw: str) -> tuple[collections.Counter, int, int]:
    """Samples of the event-loop thread by group, their total, and the model thread's samples in a model call."""
    counts: collections.Counter = collections.Counter()
    loop_total = model_thread = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        if frames[0].startswith("Thread._bootstrap"):  # the model thread (the loop runs in the main thread)
            model_thread += n if any("SignatureRunner" in f for f in frames) else 0
            continue
        loop_total += n
        for frame in reversed(frames):
            group = next((name for name, keys in GROUPS if any(key in frame for key in keys)), None)
            if group is not None:
                counts[group] += n
                break
        else:
            counts[LOOP] += n
    return counts, loop_total, model_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load", default="JSON /encode, 1 image", help="one of benchmarks/run.py's loads")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if shutil.which("wrk") is None or not Path(spy).exists():
        raise SystemExit("needs wrk (apt-get install wrk) and py-spy (pip install -e '.[dev]')")
    folder = Path(tempfile.mkdtemp(prefix="aeserve-profile-"))
    load = loads(folder)[args.load]
    env = dict(item.split("=", 1) for item in args.env)
    process, base, _ = local_server.start(
        "app.main:app", "--workers", "1", "--no-access-log", "--log-level", "warning", env=env
    )
    try:
        wrk(base, load, 2, 8, folder)
        raw = folder / "samples.txt"
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(process.pid), "--duration", str(args.seconds), "--rate", "500",
             "--format", "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result = wrk(base, load, args.seconds, 8, folder)
        recorder.wait(timeout=60)
    finally:
        local_server.stop(process)
    counts, total, model_thread = group_samples(raw.read_text())
    print(f"\n{args.load}: {result['rps']:,.0f} requests/s under py-spy; {total:,} samples of the event-loop thread\n")
    print("| where | share of the event-loop thread's samples |")
    print("|---|---:|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / total:.0f} % |")
    share = 100 * model_thread / total
    print(f"\nThe model thread was in a model call in {model_thread:,} samples ({share:.0f} % as many).")


if __name__ == "__main__":
    main()
