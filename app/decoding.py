"""Image decoding off the event loop: a bounded pool of threads or processes, entered within a deadline.

Decoding an uploaded file is the one step of a request whose cost the client chooses (a 125 KB
progressive JPEG can take seconds): on the event loop it would stall every other request, the
health checks included. :class:`DecodePool` runs it on ``workers`` threads (Pillow and numpy
release the GIL while they decode and resize) or processes; ``benchmarks/decode_pool.py``
measures both. At most ``workers`` requests decode at once; a request that cannot start within
the deadline gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, Literal

from app.errors import ApiError


def _call(function: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """``function(*args)``, with an :class:`ApiError` returned as ``(status, message)`` (it crosses a process
    boundary, where an exception of several arguments does not unpickle)."""
    try:
        return True, function(*args)
    except ApiError as exc:
        return False, (exc.status, exc.message, exc.headers)


def _lower_priority() -> None:
    """Give this decoder thread (or process) the lowest CPU priority (nice 19): on a busy machine, the work
    a client chose to make costly waits for every other request's, not the reverse."""
    with contextlib.suppress(AttributeError, OSError):  # no setpriority on this platform, or refused
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _release(loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore, _: concurrent.futures.Future) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed
        loop.call_soon_threadsafe(slots.release)


# A request whose files declare at most this many pixels in all (a 1024x1024 image, or a batch of small
# ones) decodes in the small lane: it never waits behind a large file another client sent.
SMALL_PIXELS = 1 << 20


class Lane:
    """One bounded set of decoders: ``workers`` threads or processes, created on first use."""

    def __init__(self, kind: Literal["thread", "process"], workers: int, name: str):
        self.kind, self.workers, self.name = kind, workers, name
        self.executor: concurrent.futures.Executor | None = None
        self.slots: asyncio.Semaphore | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def pool(self) -> concurrent.futures.Executor:
        if self.executor is None:
            if self.kind == "process":
                # spawn: the server's threads (the model thread, LiteRT's) must not be forked mid-call
                context = multiprocessing.get_context("spawn")
                self.executor = concurrent.futures.ProcessPoolExecutor(
                    self.workers, mp_context=context, initializer=_lower_priority
                )
            else:
                self.executor = concurrent.futures.ThreadPoolExecutor(
                    self.workers, thread_name_prefix=f"decode-{self.name}", initializer=_lower_priority
                )
        return self.executor

    def semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self.slots is None:  # a semaphore belongs to one loop
            self.loop, self.slots = loop, asyncio.Semaphore(self.workers)
        return self.slots

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


class DecodePool:
    """At most ``workers`` blocking calls at once in each of two lanes, on threads or processes; callers wait
    at most ``deadline`` seconds for their turn (503 beyond).

    Calls that declare at most :data:`SMALL_PIXELS` pixels take the small lane, larger ones the large lane,
    so uploads of ordinary size never queue behind the costly files of another client. Every decoder runs
    at the lowest CPU priority, so that decoding yields the CPU to the model calls and the event loop."""

    def __init__(self, kind: Literal["thread", "process"] = "thread", workers: int = 2, deadline: float = 2.0):
        self.kind = kind
        self.workers = workers
        self.deadline = deadline
        self.small = Lane(kind, workers, "small")
        self.large = Lane(kind, workers, "large")

    async def run(self, function: Callable[..., Any], *args: Any, pixels: int = 0) -> Any:
        """``function(*args)`` on the lane for ``pixels``; its :class:`ApiError` raised here; 503 when no worker
        of that lane frees within the deadline."""
        lane = self.small if pixels <= SMALL_PIXELS else self.large
        loop = asyncio.get_running_loop()
        slots = lane.semaphore()
        try:
            await asyncio.wait_for(slots.acquire(), self.deadline)
        except TimeoutError:
            raise ApiError(
                503,
                f"server busy: every image decoder stayed busy for {self.deadline * 1000:.0f} ms "
                "(AESERVE_QUEUE_DEADLINE_MS); retry shortly",
                {"Retry-After": str(max(1, math.ceil(self.deadline)))},
            ) from None
        try:
            future = lane.pool().submit(_call, function, *args)
        except BaseException:
            slots.release()
            raise
        # The slot is freed when the work ends, not when its caller stops waiting (a running call goes on).
        future.add_done_callback(partial(_release, loop, slots))
        try:
            ok, outcome = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            lane.executor = None  # a worker process died (killed, or crashed by a file): start afresh
            raise ApiError(503, "an image decoder process failed; retry", {"Retry-After": "1"}) from None
        if not ok:
            raise ApiError(*outcome)
        return outcome

    def close(self) -> None:
        """Let the workers end once their calls have run."""
        self.small.close()
        self.large.close()
