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


def _release(loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore, _: concurrent.futures.Future) -> None:
    with contextlib.suppress(RuntimeError):  # the loop has closed
        loop.call_soon_threadsafe(slots.release)


class DecodePool:
    """At most ``workers`` blocking calls at once, on threads or processes; callers wait at most ``deadline``
    seconds for their turn (503 beyond)."""

    def __init__(self, kind: Literal["thread", "process"] = "thread", workers: int = 2, deadline: float = 2.0):
        self.kind = kind
        self.workers = workers
        self.deadline = deadline
        self._executor: concurrent.futures.Executor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _pool(self) -> concurrent.futures.Executor:
        if self._executor is None:
            if self.kind == "process":
                # spawn: the server's threads (the model thread, LiteRT's) must not be forked mid-call
                context = multiprocessing.get_context("spawn")
                self._executor = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)
            else:
                self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        return self._executor

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on the pool; its :class:`ApiError` raised here; 503 when no worker frees
        within the deadline."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a semaphore belongs to one loop
            self._loop, self._slots = loop, asyncio.Semaphore(self.workers)
        slots = self._slots
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
            future = self._pool().submit(_call, function, *args)
        except BaseException:
            slots.release()
            raise
        # The slot is freed when the work ends, not when its caller stops waiting (a running call goes on).
        future.add_done_callback(partial(_release, loop, slots))
        try:
            ok, outcome = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._executor = None  # a worker process died (killed, or crashed by a file): start afresh
            raise ApiError(503, "an image decoder process failed; retry", {"Retry-After": "1"}) from None
        if not ok:
            raise ApiError(*outcome)
        return outcome

    def close(self) -> None:
        """Let the workers end once their calls have run."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
