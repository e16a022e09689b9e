"""The thread-to-iterator bridge with fake jobs: ordering, errors, cancellation, async use."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from client.errors import ClientStateError
from client.streams import AsyncGenerationStream, CancelToken, GenerationStream, StreamStats

pytestmark = pytest.mark.unit


def counting_job(n: int, delay: float = 0.0, started: threading.Event | None = None):
    def job(emit, should_cancel, started_at):
        if started:
            started.set()
        sent = 0
        for i in range(n):
            if should_cancel():
                break
            emit(f"t{i} ")
            sent += 1
            time.sleep(delay)
        reason = "cancelled" if should_cancel() else "length"
        elapsed = time.perf_counter() - started_at
        return StreamStats(" ".join(f"t{i}" for i in range(sent)), 1, sent, 0.0, elapsed, reason)

    return job


def test_sync_stream_yields_in_order_then_has_stats():
    stream = GenerationStream(counting_job(5))
    with pytest.raises(ClientStateError):
        _ = stream.result
    assert list(stream) == [f"t{i} " for i in range(5)]
    assert stream.result.completion_tokens == 5 and stream.result.stop_reason == "length"


def test_a_stream_does_not_start_before_it_is_iterated():
    started = threading.Event()
    stream = GenerationStream(counting_job(1, started=started))
    assert not started.wait(0.2)
    assert stream.text() == "t0 "
    assert started.is_set()


def test_errors_of_the_job_reach_the_consumer():
    def failing(emit, should_cancel, started_at):
        emit("partial")
        raise ValueError("boom")

    stream = GenerationStream(failing)
    assert next(stream) == "partial"
    with pytest.raises(ValueError, match="boom"):
        next(stream)


def test_cancel_stops_the_worker_within_a_step():
    token = CancelToken()
    stream = GenerationStream(counting_job(1000, delay=0.01), token)
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            token.cancel()
    assert stream.result.stop_reason == "cancelled"
    assert stream.result.completion_tokens <= 5


def test_close_waits_for_the_worker():
    stream = GenerationStream(counting_job(1000, delay=0.01))
    next(stream)
    stream.close()
    assert stream._worker.finished.is_set()


def test_async_stream_and_cancellation_by_task_cancel():
    async def scenario() -> tuple[list[str], AsyncGenerationStream]:
        done = AsyncGenerationStream(counting_job(4))
        pieces = [piece async for piece in done]

        slow = AsyncGenerationStream(counting_job(10_000, delay=0.01))

        async def consume() -> None:
            async for _ in slow:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):  # the worker notices within a step
            if slow.finished:
                break
            await asyncio.sleep(0.01)
        return pieces, slow

    pieces, slow = asyncio.run(scenario())
    assert pieces == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert slow.cancel_token.cancelled and slow.finished


def test_the_event_loop_keeps_running_while_a_job_blocks():
    def blocking(emit, should_cancel, started_at):
        time.sleep(0.5)  # like a petals step: blocking, in the worker thread
        emit("x")
        return StreamStats("x", 1, 1, 0.5, 0.5, "length")

    async def scenario() -> int:
        ticks = 0
        stream = AsyncGenerationStream(blocking)
        consumer = asyncio.create_task(stream.text())
        while not consumer.done():
            ticks += 1
            await asyncio.sleep(0.01)
        assert await consumer == "x"
        return ticks

    assert asyncio.run(scenario()) > 20
