"""One pacer per channel: every edit and post the bot makes there (all answers streaming in it,
their queue notices) draws from one budget, as Discord counts them per channel.

Discord allows about five message edits per five seconds in a channel. Each ``turn()`` waits
until the sliding window has room and then takes a place in it, first come first served, so
two streams share the budget instead of each drawing 429s. ``back_off(seconds)`` honours a
Retry-After that reached the bot: nobody in the channel goes again before it has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class ChannelPacer:
    def __init__(
        self, calls: int, window_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if calls < 1 or window_s < 0:
            raise ValueError(f"a pacer needs calls >= 1 and window_s >= 0, got {calls}/{window_s}")
        self.calls, self.window_s = calls, window_s
        self._clock = clock
        self._starts: deque[float] = deque()
        self._not_before = 0.0
        self._lock = asyncio.Lock()  # FIFO: waiting callers go in arrival order
        self.waited_s = 0.0  # total time callers waited for the budget (for tests and logs)

    def delay(self) -> float:
        """Seconds until the next call may go (0 when now)."""
        now = self._clock()
        while self._starts and self._starts[0] <= now - self.window_s:
            self._starts.popleft()
        wait = self._not_before - now
        if len(self._starts) >= self.calls:
            wait = max(wait, self._starts[0] + self.window_s - now)
        return max(wait, 0.0)

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._lock:
            while (wait := self.delay()) > 0:
                self.waited_s += wait
                await asyncio.sleep(wait)
            self._starts.append(self._clock())
        yield

    def back_off(self, seconds: float) -> None:
        self._not_before = max(self._not_before, self._clock() + max(seconds, 0.0))


class Pacers:
    """Channel id -> its pacer (threads count as their own channel, as Discord does)."""

    def __init__(self, calls: int, window_s: float) -> None:
        self.calls, self.window_s = calls, window_s
        self._pacers: dict[int, ChannelPacer] = {}

    def __call__(self, channel_id: int) -> ChannelPacer:
        pacer = self._pacers.get(channel_id)
        if pacer is None:
            pacer = self._pacers[channel_id] = ChannelPacer(self.calls, self.window_s)
        return pacer
