"""What handing a model call to another thread costs the event loop, per call.

Compares ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor`` with the service's
``ModelThread`` (``app/batching.py``) and with calling on the loop itself, for a call that does
nothing (so only the hand-off is measured), on an idle loop and on a loop kept busy by four
tasks that each run about 50 µs of Python between yields (as request parsing does). Prints
wall and CPU µs per call, median of ``--repeats`` runs. Run: ``python benchmarks/handoff.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.batching import ModelThread


def nothing() -> int:
    return 1


async def busy(stop: asyncio.Event) -> None:
    while not stop.is_set():
        total = 0
        for i in range(1000):
            total += i
        await asyncio.sleep(0)


async def measure(call: Callable[[], Awaitable[int]], calls: int, loaded: bool) -> tuple[float, float]:
    """Wall and process CPU µs per awaited call, with or without the busy tasks running."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(busy(stop)) for _ in range(4)] if loaded else []
    await asyncio.sleep(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stop.set()
    await asyncio.gather(*tasks)
    return wall / calls * 1e6, cpu / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)
    thread = ModelThread("handoff")

    async def inline() -> int:
        return nothing()

    ways = {
        "on the loop": inline,
        "ModelThread.run": lambda: thread.run(nothing),
        "loop.run_in_executor": lambda: loop.run_in_executor(executor, nothing),
    }
    print("| hand-off | loop | wall µs/call | CPU µs/call |")
    print("|---|---|---:|---:|")
    for loaded in (False, True):
        calls = args.calls // 100 if loaded else args.calls
        for name, call in ways.items():
            runs = [await measure(call, calls, loaded) for _ in range(args.repeats)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"| {name} | {'busy' if loaded else 'idle'} | {wall:,.1f} | {cpu:,.1f} |", flush=True)
    thread.close()
    executor.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    uvloop.run(main(parser.parse_args()))
