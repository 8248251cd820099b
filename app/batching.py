"""Dynamic batching: requests that arrive together are answered by one model call.

Like TF Serving's ``batch_timeout_micros`` and Triton's ``max_queue_delay_microseconds``:
the first request of a batch waits at most ``max_delay_us`` for others; a batch holds at
most ``max_batch`` images (larger requests are split); model calls run on a model thread
(one, shared by the batchers the registry makes), never on the event loop; the queue is
bounded, and a request that would overflow it is answered 503 with ``Retry-After`` at once
instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.errors import ApiError

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchConfig:
    """How a model's requests are batched."""

    max_batch: int = 256
    max_delay_us: int = 500
    max_queue_images: int = 16384


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
        executor: Executor | None = None,
    ):
        self._predict = predict
        self.max_batch = config.max_batch
        self.max_delay = config.max_delay_us / 1e6
        self.max_queue_images = config.max_queue_images
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{name}")
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

    async def predict(self, images: np.ndarray) -> Outputs:
        """The model's outputs for ``images``, computed in a shared batch; 503 when the queue is full."""
        if self._queued_images + len(images) > self.max_queue_images:
            raise ApiError(
                503,
                f"server busy: {self._queued_images} images already queued for this model; retry shortly",
                {"Retry-After": "1"},
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
        results = await asyncio.gather(*futures)
        return {key: np.concatenate([r[key] for r in results]) for key in results[0]}

    def _take(self) -> list[_Pending]:
        batch, size = [], 0
        while self._queue and size + len(self._queue[0].images) <= self.max_batch:
            item = self._queue.popleft()
            batch.append(item)
            size += len(item.images)
        self._queued_images -= size
        return batch

    def _run(self, batch: list[_Pending]) -> list[Outputs | BaseException]:
        """Runs on the model thread: one call for the batch; if it fails, each request alone, so an
        error stays with the request that caused it."""
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
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather()
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            results = await loop.run_in_executor(self._executor, self._run, batch)
            if self._on_batch is not None:
                self._on_batch(sum(len(i.images) for i in batch), started - min(i.queued_at for i in batch))
            for item, result in zip(batch, results, strict=True):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def close(self) -> None:
        """Stop the worker and the model thread."""
        if self._task is not None:
            self._task.cancel()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
