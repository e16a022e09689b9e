"""How many questions run and wait: a per-user sliding-window rate limit and a global limit on
concurrent generations whose FIFO queue tells each waiting question its position.

Both live on the bot's event loop (no locks); the clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from bot.errors import QueueFull

Clock = Callable[[], float]


class RateLimiter:
    """At most ``count`` questions per user in any ``window_s`` seconds."""

    def __init__(self, count: int, window_s: float, clock: Clock = time.monotonic) -> None:
        self.count = count
        self.window_s = window_s
        self._clock = clock
        self._asked: dict[int, deque[float]] = {}

    def try_acquire(self, user_id: int) -> float | None:
        """Record a question and return None, or return the seconds until one is allowed."""
        now = self._clock()
        times = self._asked.setdefault(user_id, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.count:
            return times[0] + self.window_s - now
        times.append(now)
        return None

    def __len__(self) -> int:
        """Users currently tracked."""
        return len(self._asked)

    def forget_idle(self) -> None:
        """Drop users with no question in the window (keeps memory bounded)."""
        now = self._clock()
        for user_id in [u for u, t in self._asked.items() if not t or t[-1] <= now - self.window_s]:
            del self._asked[user_id]


PositionCallback = Callable[[int], None]


@dataclass(eq=False)
class _Waiter:
    on_position: PositionCallback | None
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GenerationSlots:
    """``max_running`` generations at once; up to ``max_waiting`` more wait in FIFO order and
    hear their 1-based position whenever it changes."""

    def __init__(self, max_running: int, max_waiting: int) -> None:
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._waiting: deque[_Waiter] = deque()
        self.on_change: Callable[[], None] | None = None  # metrics hook

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _changed(self) -> None:
        for position, waiter in enumerate(self._waiting, start=1):
            if waiter.on_position is not None:
                waiter.on_position(position)
        if self.on_change is not None:
            self.on_change()

    def _grant_next(self) -> None:
        while self._waiting and self.running < self.max_running:
            waiter = self._waiting.popleft()
            if waiter.granted.done():  # cancelled while waiting
                continue
            self.running += 1
            waiter.granted.set_result(None)

    @asynccontextmanager
    async def slot(self, on_position: PositionCallback | None = None) -> AsyncIterator[None]:
        """Hold one generation slot for the body; raises QueueFull when the line is full.
        Cancelling the waiting task leaves the line and moves the others up."""
        if self.running < self.max_running and not self._waiting:
            self.running += 1
            self._changed()
        else:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(
                    f"{len(self._waiting)} questions are already waiting for the swarm; "
                    "please ask again in a minute"
                )
            waiter = _Waiter(on_position)
            self._waiting.append(waiter)
            self._changed()
            try:
                await waiter.granted
            except BaseException:
                if waiter.granted.done() and not waiter.granted.cancelled():
                    self.running -= 1  # granted just as we were cancelled: give it back
                elif waiter in self._waiting:
                    self._waiting.remove(waiter)
                self._grant_next()
                self._changed()
                raise
            self._changed()
        try:
            yield
        finally:
            self.running -= 1
            self._grant_next()
            self._changed()
