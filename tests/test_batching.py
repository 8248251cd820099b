"""The batcher's behaviour (not its speed): right caller, order, splitting, error isolation, back-pressure."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from app.batching import BatchConfig, Batcher, ModelThread
from app.errors import ApiError

pytestmark = pytest.mark.anyio


class Model:
    """Sums each image; an image holding -1 makes the whole call fail (a poisoned input)."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(len(images))
        self.threads.add(threading.get_ident())
        if (images == -1).any():
            raise ValueError("poisoned input")
        return {"sums": images.reshape(len(images), -1).sum(axis=1), "first": images[:, 0, 0].copy()}


async def until(condition, timeout: float = 5.0) -> None:
    """Yield to the event loop until ``condition()`` holds (the batcher's worker has moved on)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def images(*values: float) -> np.ndarray:
    return np.stack([np.full((28, 28), v, np.float32) for v in values])


async def test_each_caller_gets_its_own_results_in_order():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_batch=64, max_delay_us=2000))
    requests = [images(*(10 * i + j for j in range(i % 3 + 1))) for i in range(20)]
    results = await asyncio.gather(*(batcher.predict(r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["first"], request[:, 0, 0])
        np.testing.assert_allclose(result["sums"], request.reshape(len(request), -1).sum(axis=1))
    assert len(model.calls) < len(requests)  # requests that arrived together shared calls
    assert sum(model.calls) == sum(len(r) for r in requests)


async def test_large_requests_are_split_and_reassembled():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_batch=4, max_delay_us=0))
    request = images(*range(10))
    result = await batcher.predict(request)
    np.testing.assert_array_equal(result["first"], np.arange(10, dtype=np.float32))
    assert max(model.calls) <= 4 and sum(model.calls) == 10


async def test_errors_stay_with_their_own_request():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_batch=64, max_delay_us=5000))
    good_a, bad, good_b = images(1, 2), images(3, -1), images(4)
    results = await asyncio.gather(
        batcher.predict(good_a), batcher.predict(bad), batcher.predict(good_b), return_exceptions=True
    )
    assert isinstance(results[1], ValueError)
    np.testing.assert_array_equal(results[0]["first"], [1, 2])
    np.testing.assert_array_equal(results[2]["first"], [4])
    assert model.calls[0] == 5  # first tried together, then one by one
    # and the batcher keeps serving
    np.testing.assert_array_equal((await batcher.predict(images(7)))["first"], [7])


async def test_full_queue_answers_503_at_once():
    gate = threading.Event()
    model = Model(gate)
    batcher = Batcher(model, BatchConfig(max_batch=2, max_delay_us=0, max_queue_images=4))
    running = asyncio.ensure_future(batcher.predict(images(1, 2)))  # taken by the worker, blocks on the gate
    await until(model.entered.is_set)
    waiting = [asyncio.ensure_future(batcher.predict(images(i, i))) for i in (3, 4)]
    await until(lambda: batcher.queued_images == 4)
    with pytest.raises(ApiError) as info:
        await batcher.predict(images(9))
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    gate.set()
    done = await asyncio.gather(running, *waiting)
    assert [list(d["first"]) for d in done] == [[1, 2], [3, 3], [4, 4]]
    assert batcher.queued_images == 0


async def test_model_runs_off_the_event_loop():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_delay_us=0))
    await batcher.predict(images(1))
    assert threading.get_ident() not in model.threads


async def test_batch_callback_sees_sizes_and_queue_delays():
    seen = []
    batcher = Batcher(Model(), BatchConfig(max_batch=8, max_delay_us=1000), on_batch=lambda n, d: seen.append((n, d)))
    await asyncio.gather(*(batcher.predict(images(i)) for i in range(5)))
    assert sum(n for n, _ in seen) == 5 and all(d >= 0 for _, d in seen)


async def test_abandoned_request_does_not_break_the_batch():
    gate = threading.Event()
    model = Model(gate)
    batcher = Batcher(model, BatchConfig(max_batch=8, max_delay_us=0))
    first = asyncio.ensure_future(batcher.predict(images(1)))
    await until(model.entered.is_set)
    abandoned = asyncio.ensure_future(batcher.predict(images(2)))
    kept = asyncio.ensure_future(batcher.predict(images(3)))
    await until(lambda: batcher.queued_images == 2)
    abandoned.cancel()
    gate.set()
    assert list((await kept)["first"]) == [3]
    assert list((await first)["first"]) == [1]


async def test_lone_request_does_not_wait_out_the_delay():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_batch=64, max_delay_us=30_000_000))
    result = await asyncio.wait_for(batcher.predict(images(4)), timeout=5)  # not 30 s: nothing else is coming
    assert list(result["first"]) == [4] and model.calls == [1]


async def test_requests_arriving_together_still_share_a_call_under_a_long_delay():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_batch=64, max_delay_us=30_000_000))
    results = await asyncio.wait_for(asyncio.gather(*(batcher.predict(images(i)) for i in range(6))), timeout=5)
    assert [list(r["first"]) for r in results] == [[i] for i in range(6)]
    assert model.calls == [6]


async def test_batchers_can_share_one_model_thread():
    thread = ModelThread()
    first, second = Model(), Model()
    a = Batcher(first, BatchConfig(max_delay_us=0), thread=thread)
    b = Batcher(second, BatchConfig(max_delay_us=0), thread=thread)
    await asyncio.gather(a.predict(images(1)), b.predict(images(2)))
    assert first.threads | second.threads == {thread.ident} and threading.get_ident() != thread.ident
    a.close()
    b.close()
    assert await thread.run(lambda: 7) == 7  # closing a batcher leaves the shared thread running
    thread.close()


async def test_model_thread_runs_calls_in_order_and_hands_back_each_outcome():
    thread = ModelThread()
    seen: list[int] = []

    def call(i: int) -> int:
        seen.append(i)
        if i == 3:
            raise ValueError("three")
        return i * i

    outcomes = await asyncio.gather(*(thread.run(call, i) for i in range(6)), return_exceptions=True)
    assert seen == list(range(6))
    assert outcomes[:3] == [0, 1, 4] and outcomes[4:] == [16, 25]
    assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "three"
    thread.close()


async def test_model_thread_survives_a_caller_that_left():
    gate, thread = threading.Event(), ModelThread()
    waiting = asyncio.ensure_future(thread.run(gate.wait, 5))
    await asyncio.sleep(0.01)
    waiting.cancel()  # the client went away while its call ran
    gate.set()
    assert await thread.run(lambda: "next") == "next"
    thread.close()


def cheap(images: int) -> float:
    """A cost model: 20 µs per image."""
    return 20e-6 * images


async def test_calls_measured_cheaper_than_the_bound_run_on_the_loop():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_delay_us=0, inline_max_us=100), cost=cheap)
    await batcher.predict(images(*range(3)))  # 60 µs: on the loop
    assert model.threads == {threading.get_ident()}
    await batcher.predict(images(*range(6)))  # 120 µs: on the model thread
    assert len(model.threads) == 2 and model.calls == [3, 6]
    batcher.close()


@pytest.mark.parametrize(
    ("config", "cost"),
    [
        (BatchConfig(max_delay_us=0, inline_max_us=0), cheap),  # turned off
        (BatchConfig(max_delay_us=0), None),  # no cost model: never measured
        (BatchConfig(max_delay_us=0), lambda images: 1.0),  # dear
    ],
)
async def test_other_calls_run_on_the_model_thread(config, cost):
    model = Model()
    batcher = Batcher(model, config, cost=cost)
    await batcher.predict(images(1))
    assert model.threads and threading.get_ident() not in model.threads
    batcher.close()


async def test_a_failing_call_on_the_loop_fails_only_its_own_request():
    model = Model()
    batcher = Batcher(model, BatchConfig(max_batch=64, max_delay_us=30_000_000), cost=cheap)
    good, bad = await asyncio.gather(batcher.predict(images(0)), batcher.predict(images(5, -1)), return_exceptions=True)
    assert list(good["first"]) == [0] and isinstance(bad, ValueError)
    assert model.threads == {threading.get_ident()} and model.calls == [3, 1, 2]
    batcher.close()


async def test_a_model_busy_on_the_thread_is_not_also_called_on_the_loop():
    """Two batchers of one model (two endpoints): while one's call runs on the model thread, the other's
    cheap call waits its turn there instead of using the model on the loop at the same time."""
    gate, thread, model = threading.Event(), ModelThread(), object()
    slow, quick = Model(gate), Model()
    on_thread = Batcher(slow, BatchConfig(max_delay_us=0), thread=thread, key=model)
    cheap_one = Batcher(quick, BatchConfig(max_delay_us=0), thread=thread, cost=cheap, key=model)
    first = asyncio.ensure_future(on_thread.predict(images(1)))
    await until(slow.entered.is_set)
    assert thread.busy(model)
    second = asyncio.ensure_future(cheap_one.predict(images(2)))
    await asyncio.sleep(0.01)
    assert not quick.calls  # queued behind the running call, not run on the loop
    gate.set()
    await asyncio.gather(first, second)
    assert quick.threads == {thread.ident} and not thread.busy(model)
    await cheap_one.predict(images(3))  # the model is free again: on the loop
    assert threading.get_ident() in quick.threads
    thread.close()


async def test_a_request_that_cannot_start_within_the_deadline_gets_503():
    gate = threading.Event()
    model = Model(gate)
    batcher = Batcher(model, BatchConfig(max_batch=2, max_delay_us=0, deadline_ms=50))
    running = asyncio.ensure_future(batcher.predict(images(1, 2)))  # blocks the model thread on the gate
    await until(model.entered.is_set)
    late = asyncio.ensure_future(batcher.predict(images(3)))
    await asyncio.sleep(0.2)  # past the deadline, still queued behind the call on the gate
    gate.set()
    assert list((await running)["first"]) == [1, 2]
    with pytest.raises(ApiError) as info:
        await late
    assert info.value.status == 503 and "deadline" in info.value.message and "Retry-After" in info.value.headers
    assert model.calls == [2]  # its call was never made
    assert list((await batcher.predict(images(4)))["first"]) == [4]  # a fresh request is served
    batcher.close()


async def test_the_measured_cost_of_the_queue_refuses_at_once():
    """A queue whose calls would take longer than the deadline refuses a newcomer before it waits."""
    gate = threading.Event()
    model = Model(gate)
    config = BatchConfig(max_batch=2, max_delay_us=0, deadline_ms=500, inline_max_us=0)
    batcher = Batcher(model, config, cost=lambda count: 0.1 * count)  # 0.2 s per call of 2
    running = asyncio.ensure_future(batcher.predict(images(1, 2)))
    await until(model.entered.is_set)
    queued = [asyncio.ensure_future(batcher.predict(images(i, i))) for i in (3, 4)]
    await until(lambda: batcher.queued_images == 4)
    assert batcher.expected_wait() == pytest.approx(0.6)  # the running call and two queued
    with pytest.raises(ApiError) as info:
        await batcher.predict(images(5))
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    assert "AESERVE_QUEUE_DEADLINE_MS" in info.value.message and batcher.queued_images == 4
    gate.set()
    assert [list(d["first"]) for d in await asyncio.gather(running, *queued)] == [[1, 2], [3, 3], [4, 4]]
    assert batcher.expected_wait() == 0
    batcher.close()


async def test_requests_whose_caller_left_are_not_computed():
    gate = threading.Event()
    model = Model(gate)
    batcher = Batcher(model, BatchConfig(max_batch=2, max_delay_us=0))
    running = asyncio.ensure_future(batcher.predict(images(1, 2)))
    await until(model.entered.is_set)
    gone = asyncio.ensure_future(batcher.predict(images(3, 3, 3, 3)))  # two calls' worth
    await until(lambda: batcher.queued_images == 4)
    gone.cancel()
    gate.set()
    await running
    assert list((await batcher.predict(images(5)))["first"]) == [5]
    assert model.calls == [2, 1]
    batcher.close()
