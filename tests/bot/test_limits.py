"""The per-user rate limit and the global generation slots with queue positions."""

from __future__ import annotations

import asyncio

import pytest

from bot.errors import QueueFull
from bot.jobs import CancelToken, Job, Jobs
from bot.limits import GenerationSlots, RateLimiter

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_is_a_sliding_window_per_user() -> None:
    clock = Clock()
    limiter = RateLimiter(2, 60.0, clock)
    assert limiter.try_acquire(1) is None
    clock.now += 10
    assert limiter.try_acquire(1) is None
    assert limiter.try_acquire(2) is None  # another user is not affected
    clock.now += 5
    assert limiter.try_acquire(1) == pytest.approx(45.0)  # the first question leaves at t+60
    clock.now += 45
    assert limiter.try_acquire(1) is None
    clock.now += 1000
    limiter.forget_idle()
    assert len(limiter) == 0


async def test_slots_queue_in_order_and_report_positions() -> None:
    slots = GenerationSlots(max_running=1, max_waiting=5)
    positions: dict[str, list[int]] = {"b": [], "c": []}
    order: list[str] = []
    release_a = asyncio.Event()

    async def run(name: str, gate: asyncio.Event | None = None) -> None:
        callback = positions[name].append if name in positions else None
        async with slots.slot(on_position=callback):
            order.append(name)
            if gate is not None:
                await gate.wait()

    a = asyncio.create_task(run("a", release_a))
    await asyncio.sleep(0)
    b = asyncio.create_task(run("b"))
    c = asyncio.create_task(run("c"))
    await asyncio.sleep(0.01)
    assert (slots.running, slots.waiting) == (1, 2)
    assert positions == {"b": [1, 1], "c": [2]}
    release_a.set()
    await asyncio.gather(a, b, c)
    assert order == ["a", "b", "c"]
    assert positions["c"][-1] == 1  # moved up when b left the line
    assert (slots.running, slots.waiting) == (0, 0)


async def test_a_full_line_refuses_and_a_cancelled_waiter_leaves_it() -> None:
    slots = GenerationSlots(max_running=1, max_waiting=1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with slots.slot():
            await hold.wait()

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull, match="1 questions are already waiting"):
        async with slots.slot():
            pass
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.waiting == 0 and slots.running == 1
    hold.set()
    await first
    assert slots.running == 0


async def test_cancel_token_wakes_async_waiters_from_another_thread() -> None:
    token = CancelToken()
    waiter = asyncio.create_task(token.wait())
    await asyncio.sleep(0)
    await asyncio.to_thread(token.cancel, by="maya", reason="breakall")
    await asyncio.wait_for(waiter, 1)
    assert token() and token.by == "maya" and token.reason == "breakall"
    assert token.cancel(by="someone else") is False and token.by == "maya"


async def test_jobs_cancel_by_user_or_all() -> None:
    jobs = Jobs()
    mine, theirs = jobs.add(Job(1, 10, "q1")), jobs.add(Job(2, 10, "q2"))
    assert jobs.cancel_user(1, by="alice") == [mine]
    assert not theirs.token.cancelled
    assert jobs.cancel_all(by="maya") == [theirs]  # mine was cancelled already
    jobs.done(mine)
    assert len(jobs) == 1 and mine.finished.is_set()
