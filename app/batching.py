"""Dynamic batching: requests that arrive together are answered by one model call.

Like TF Serving's ``batch_timeout_micros`` and Triton's ``max_queue_delay_microseconds``:
the first request of a batch waits at most ``max_delay_us`` for others; a batch holds at
most ``max_batch`` images (larger requests are split); model calls run on a
:class:`ModelThread` (one, shared by the batchers the registry makes); the queue is
bounded, and a request that would overflow it is answered 503 with ``Retry-After`` at once
instead of waiting without end. The queue is bounded in time too: a request whose model call
could not start within ``deadline_ms`` by the calls' costs measured at load (the model thread's
calls and this queue's, scaled by how much longer than measured the recent calls took) is refused
at once, and one that has waited the deadline without starting gets its 503 instead of a call.

The one exception to the model thread: a call whose cost, as measured when the model was
loaded, is at most ``inline_max_us`` (100 µs by default; 0 turns this off) runs on the
event loop. Handing a batch to another thread and back costs more than that while the loop
is busy: the thread must win a core and the GIL from the loop for each step of the hand-off
(``benchmarks/handoff.py``; ``benchmarks/run.py --env AESERVE_BATCH_INLINE_MAX_US=0`` shows
the service without the exception). Such a call holds the loop no longer than parsing one
JSON request does, and every call above the bound (big batches, the convolutional models)
runs on the model thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

import numpy as np

from app.errors import ApiError

Outputs = dict[str, np.ndarray]


class ModelThread:
    """One thread that runs blocking calls in order and hands each outcome back to its caller's loop.

    ``loop.run_in_executor`` on a one-thread ``ThreadPoolExecutor`` does the same with more
    machinery (a concurrent future chained to an asyncio one); here a call is one queue put on
    the loop's side and, on the thread's, the call and one ``call_soon_threadsafe``. Either way
    the hand-off itself costs about 100 µs of CPU on an idle loop and milliseconds on a busy one,
    where the thread waits for the loop to let go of the GIL (``benchmarks/handoff.py``), which
    is why the batcher keeps calls cheaper than that on the loop.
    """

    def __init__(self, name: str = "model"):
        self.name = name
        self._queue: SimpleQueue = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: dict[object, int] = {}  # calls queued or running, by key; read and written on the loop
        self._backlog = 0.0  # the expected seconds of the calls queued or running; on the loop too
        self._slowdown = 1.0  # how long calls take against their expected cost, lately; on the loop too

    @property
    def ident(self) -> int | None:
        """The thread's id once started."""
        return self._thread.ident if self._thread is not None else None

    async def run(self, function: Callable[..., Any], *args: Any, key: object = None, cost: float = 0.0) -> Any:
        """``function(*args)`` on the thread, after the calls queued before it; its exception if it raises.

        ``key`` names what the call uses (a model): :meth:`busy` tells whether a call with that key
        is queued or running, until the thread has finished it (even when its caller has left).
        ``cost``: the seconds the call is expected to take, counted in :attr:`backlog` until it ends.
        """
        if self._thread is None:
            self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending[key] = self._pending.get(key, 0) + 1
        self._backlog += cost
        self._queue.put((function, args, loop, future, key, cost))
        return await future

    @property
    def backlog(self) -> float:
        """The expected seconds of the calls queued on the thread or running there."""
        return max(self._backlog, 0.0)

    @property
    def slowdown(self) -> float:
        """How many times their expected cost the recent calls took (a moving average; 1 until calls with a
        cost have run): a busy machine's calls take longer than the costs measured at load."""
        return self._slowdown

    def busy(self, key: object) -> bool:
        """Whether a call with ``key`` is queued or running on the thread."""
        return key in self._pending

    def _settle(
        self, future: asyncio.Future, outcome: Any, failed: bool, key: object, cost: float, seconds: float
    ) -> None:
        """On the caller's loop, once the thread has finished the call."""
        self._backlog -= cost
        if cost > 0:
            self._slowdown += 0.2 * (min(max(seconds / cost, 0.5), 20.0) - self._slowdown)
        left = self._pending[key] - 1
        if left:
            self._pending[key] = left
        else:
            del self._pending[key]
        if not future.done():  # the caller may have been cancelled meanwhile
            if failed:
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            function, args, loop, future, key, cost = item
            started = time.perf_counter()
            try:
                outcome, failed = function(*args), False
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, never raised here
                outcome, failed = exc, True
            seconds = time.perf_counter() - started
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                loop.call_soon_threadsafe(self._settle, future, outcome, failed, key, cost, seconds)

    def close(self) -> None:
        """Let the thread end once the calls queued before this one have run."""
        self._queue.put(None)


@dataclass(frozen=True)
class BatchConfig:
    """How a model's requests are batched."""

    max_batch: int = 256
    max_delay_us: int = 500
    max_queue_images: int = 16384
    inline_max_us: int = 100
    deadline_ms: int = 2000


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    queued_at: float


class Batcher:
    """Queues ``float32 [N,28,28]`` batches for one model and runs them together."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], Outputs],
        config: BatchConfig = BatchConfig(),
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
        thread: ModelThread | None = None,
        cost: Callable[[int], float] | None = None,
        key: object = None,
    ):
        """``cost(n)``: the seconds a call of ``n`` images is expected to take (without it, every call
        runs on the model thread). ``key``: what ``predict`` uses, shared with other batchers of the
        thread (the model): a call runs on the loop only while none with the same key is on the thread,
        so the two never use one model at once."""
        self._predict = predict
        self.max_batch = config.max_batch
        self.max_delay = config.max_delay_us / 1e6
        self.max_queue_images = config.max_queue_images
        self.inline_max = config.inline_max_us / 1e6
        self.deadline = config.deadline_ms / 1e3
        self._cost = cost
        self._key = self if key is None else key
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._next_shed = 0.0
        self._own_thread = thread is None
        self._thread = thread or ModelThread(f"batcher-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._wakeup = loop, asyncio.Event()
            self._task = loop.create_task(self._work())

    def _calls_cost(self, images: int) -> float:
        """The expected seconds of the calls that ``images`` queued images make (0 without a cost model)."""
        if self._cost is None or images == 0:
            return 0.0
        full, rest = divmod(images, self.max_batch)
        seconds = full * self._cost(self.max_batch) + (self._cost(rest) if rest else 0.0)
        return seconds if math.isfinite(seconds) else 0.0

    def expected_wait(self) -> float:
        """The expected seconds before a request queued now starts its model call: the model thread's calls
        and this queue's, as measured at load, times the thread's recent slowdown."""
        return (self._thread.backlog + self._calls_cost(self._queued_images)) * self._thread.slowdown

    @staticmethod
    def _busy(message: str) -> ApiError:
        # Retry-After stays 1: a queue the deadline bounds drains within it, and a longer pause would outlast
        # the keep-alive of the client's connection
        return ApiError(503, f"server busy: {message}; retry shortly", {"Retry-After": "1"})

    async def predict(self, images: np.ndarray) -> Outputs:
        """The model's outputs for ``images``, computed in a shared batch.

        503 with ``Retry-After`` when the queue is full, when its measured cost says the request could not
        start its model call within the deadline, and when it has waited the deadline without starting.
        """
        if self._queued_images + len(images) > self.max_queue_images:
            raise self._busy(f"{self._queued_images} images already queued for this model")
        wait = self.expected_wait()
        if wait > self.deadline:
            raise self._busy(
                f"the model's queue holds about {wait * 1000:.0f} ms of work, more than the "
                f"{self.deadline * 1000:.0f} ms a request may wait (AESERVE_QUEUE_DEADLINE_MS)"
            )
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start : start + self.max_batch]
            future = loop.create_future()
            self._queue.append(_Pending(chunk, future, now))
            self._queued_images += len(chunk)
            futures.append(future)
        self._wakeup.set()
        if len(futures) == 1:
            return await futures[0]
        try:
            results = await asyncio.gather(*futures)
        except BaseException:
            for future in futures:  # one part failed or the caller left: the rest is not computed
                future.cancel()
            raise
        return {key: np.concatenate([r[key] for r in results]) for key in results[0]}

    def _late(self, waited: float) -> ApiError:
        return self._busy(
            f"the request would wait {waited * 1000:.0f} ms or more for its model call; the deadline is "
            f"{self.deadline * 1000:.0f} ms (AESERVE_QUEUE_DEADLINE_MS)"
        )

    def _shed(self) -> None:
        """Answer 503 now to the queued requests that, by the cost of the calls ahead of them, cannot start
        within the deadline: calls slower than measured (a busy machine) show it before the deadline passes.

        At most every 50 ms, and only when the whole queue would not have started by its oldest request's
        deadline (no request is late otherwise).
        """
        now = time.perf_counter()
        if not self._queue or now < self._next_shed:
            return
        if now + self.expected_wait() <= self._queue[0].queued_at + self.deadline:
            return
        self._next_shed = now + 0.05
        backlog, slowdown, ahead, kept = self._thread.backlog, self._thread.slowdown, 0, deque()
        for item in self._queue:
            start = now + (backlog + self._calls_cost(ahead)) * slowdown
            if item.future.done() or start > item.queued_at + self.deadline:
                self._queued_images -= len(item.images)
                if not item.future.done():
                    item.future.set_exception(self._late(start - item.queued_at))
            else:
                kept.append(item)
                ahead += len(item.images)
        self._queue = kept

    def _take(self) -> list[_Pending]:
        """The next batch; requests whose caller has left are dropped, and those that waited past the deadline
        get their 503 instead of a call."""
        self._shed()
        batch, size, now = [], 0, time.perf_counter()
        while self._queue and size + len(self._queue[0].images) <= self.max_batch:
            item = self._queue.popleft()
            self._queued_images -= len(item.images)
            if item.future.done():
                continue
            if now - item.queued_at > self.deadline:
                item.future.set_exception(self._late(now - item.queued_at))
                continue
            batch.append(item)
            size += len(item.images)
        return batch

    def runs_inline(self, images: int) -> bool:
        """Whether a call of ``images`` runs on the event loop (it costs less than the hand-off)."""
        return (
            self._cost is not None
            and self.inline_max > 0
            and self._cost(images) <= self.inline_max
            and not self._thread.busy(self._key)
        )

    def _run(self, batch: list[_Pending]) -> list[Outputs | BaseException]:
        """One call for the batch; if it fails, each request alone, so an error stays with the request
        that caused it. Blocking: on the model thread, or on the loop when :meth:`runs_inline`."""
        try:
            outputs = self._predict(np.concatenate([item.images for item in batch]))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests, never raised here
            if len(batch) == 1:
                return [exc]
            return [result for item in batch for result in self._run([item])]
        results, start = [], 0
        for item in batch:
            end = start + len(item.images)
            results.append({key: value[start:end] for key, value in outputs.items()})
            start = end
        return results

    async def _gather(self) -> None:
        """Let a batch grow until it is full, ``max_delay`` has passed since its oldest request arrived,
        or a pass of the event loop brings no new request (none is on its way: waiting would only add latency)."""
        if self.max_delay <= 0:
            return
        deadline = self._queue[0].queued_at + self.max_delay
        while self._queued_images < self.max_batch and time.perf_counter() < deadline:
            queued = len(self._queue)
            await asyncio.sleep(0)
            if len(self._queue) == queued:
                return

    async def _work(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather()
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            size = sum(len(item.images) for item in batch)
            inline = self.runs_inline(size)
            if inline:
                results = self._run(batch)
            else:
                results = await self._thread.run(self._run, batch, key=self._key, cost=self._calls_cost(size))
            if self._on_batch is not None:
                self._on_batch(size, started - min(i.queued_at for i in batch))
            for item, result in zip(batch, results, strict=True):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            if inline:  # the loop was held for the call: let its other work run before the next batch
                await asyncio.sleep(0)

    def close(self) -> None:
        """Stop the worker and the model thread."""
        if self._task is not None:
            self._task.cancel()
        if self._own_thread:
            self._thread.close()
