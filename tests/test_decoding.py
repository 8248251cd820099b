"""The decoding pool's behaviour (not its speed): off the loop, bounded, entered within the deadline, its
errors the callers' own, for threads and processes alike; and the request budgets of app.inputs."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from helpers import blank_png16, png_bytes

from app.decoding import DecodePool
from app.errors import ApiError
from app.inputs import Limits, decode_files

pytestmark = pytest.mark.anyio
LIMITS = Limits(max_body_bytes=2**20, max_batch=64, max_image_pixels=16_000_000)


def thread_id() -> int:
    return threading.get_ident()


def refuse() -> None:
    raise ApiError(413, "too much", {"X-Why": "test"})


async def test_calls_run_off_the_loop_and_errors_are_the_callers():
    pool = DecodePool("thread", 2)
    assert await pool.run(thread_id) != threading.get_ident()
    with pytest.raises(ApiError) as info:
        await pool.run(refuse)
    assert (info.value.status, info.value.message, info.value.headers) == (413, "too much", {"X-Why": "test"})
    pool.close()


async def test_a_caller_that_finds_every_worker_busy_past_the_deadline_gets_503():
    gate = threading.Event()
    pool = DecodePool("thread", 1, deadline=0.1)
    busy = asyncio.ensure_future(pool.run(gate.wait, 5))
    await asyncio.sleep(0.05)
    with pytest.raises(ApiError) as info:
        await pool.run(thread_id)
    assert info.value.status == 503 and "Retry-After" in info.value.headers
    assert "AESERVE_QUEUE_DEADLINE_MS" in info.value.message
    gate.set()
    assert await busy is True
    assert await pool.run(thread_id)  # the worker is free again
    pool.close()


async def test_a_worker_stays_taken_until_its_call_ends_even_when_its_caller_left():
    gate = threading.Event()
    pool = DecodePool("thread", 1, deadline=0.1)
    left = asyncio.ensure_future(pool.run(gate.wait, 5))
    await asyncio.sleep(0.05)
    left.cancel()
    with pytest.raises(ApiError):  # the call goes on: the pool is still full
        await pool.run(thread_id)
    gate.set()
    await asyncio.sleep(0.05)
    assert await pool.run(thread_id)
    pool.close()


async def test_a_process_pool_decodes_and_hands_back_its_errors():
    pool = DecodePool("process", 1, deadline=30)
    seven = np.zeros((28, 28), np.uint8)
    seven[5:8, 6:22], seven[8:24, 18:21] = 255, 255
    images = await pool.run(decode_files, [png_bytes(seven)], LIMITS, "mnist")
    np.testing.assert_allclose(images, decode_files([png_bytes(seven)], LIMITS, "mnist"))
    with pytest.raises(ApiError) as info:
        await pool.run(decode_files, [b"not an image"], LIMITS, "mnist")
    assert info.value.status == 400
    pool.close()


def test_the_request_pixel_budget_is_read_from_the_headers():
    tight = Limits(2**20, 64, 16_000_000, max_request_pixels=20_000_000)
    with pytest.raises(ApiError) as info:
        decode_files([blank_png16(4000), blank_png16(4000)], tight, "mnist")
    assert info.value.status == 413 and "32000000" in info.value.message


def test_the_cpu_budget_stops_decoding_between_files():
    tight = Limits(2**20, 64, 16_000_000, max_request_pixels=10**9, decode_cpu_ms=1)
    with pytest.raises(ApiError) as info:
        decode_files([blank_png16(2000)] * 8, tight, "mnist")
    assert info.value.status == 413 and "AESERVE_DECODE_CPU_MS" in info.value.message
    assert "1 of 8 files" in info.value.message


async def test_small_uploads_do_not_wait_behind_large_ones():
    """A call declaring few pixels takes the small lane: it runs while every large-lane decoder is busy."""
    from app.decoding import SMALL_PIXELS

    pool = DecodePool("thread", workers=1, deadline=5.0)
    release = threading.Event()
    try:
        large = asyncio.ensure_future(pool.run(release.wait, 10, pixels=SMALL_PIXELS * 16))
        await asyncio.sleep(0.05)  # the large call holds the large lane's one decoder
        assert await pool.run(sum, [1, 2, 3], pixels=28 * 28) == 6
        assert not large.done()
        with pytest.raises(ApiError) as refused:  # the large lane itself is still bounded
            pool.deadline = 0.05
            await pool.run(sum, [1], pixels=SMALL_PIXELS + 1)
        assert refused.value.status == 503
        release.set()
        assert await large is True
    finally:
        release.set()
        pool.close()
