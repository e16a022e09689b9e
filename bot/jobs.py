"""The answers in progress, so /stop and /breakall can cancel them for real.

Each job carries a ``CancelToken`` (a thread-safe flag): the generation thread checks it after
every token and ends the swarm's inference session there, and the asyncio side stops waiting
in line when it is set before the generation starts.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class CancelToken:
    """Set once, read from any thread; remembers who cancelled and why."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.by = ""
        self.reason = ""
        self.set_at: float | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def cancel(self, *, by: str = "", reason: str = "stopped") -> bool:
        """Cancel (first call wins); returns whether this call did it."""
        with self._lock:
            if self._event.is_set():
                return False
            self.by, self.reason, self.set_at = by, reason, time.monotonic()
            self._event.set()
        for loop, event in self._waiters:
            loop.call_soon_threadsafe(event.set)
        for callback in self._callbacks:
            callback()
        return True

    def add_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` on cancellation (at once when already cancelled); e.g. to pass
        the cancellation on to a client library's own token."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:  # usable as ``should_cancel``
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once cancelled (for racing against a slot in the queue)."""
        event = asyncio.Event()
        self._waiters.append((asyncio.get_running_loop(), event))
        if self._event.is_set():
            return
        await event.wait()


_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    user_id: int
    channel_id: int
    label: str  # short text for logs: the start of the question
    token: CancelToken = field(default_factory=CancelToken)
    id: int = field(default_factory=lambda: next(_ids))
    started_at: float = field(default_factory=time.monotonic)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # set when the reply is final


class Jobs:
    """Running and waiting answers by id."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}

    def add(self, job: Job) -> Job:
        self._jobs[job.id] = job
        return job

    def done(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        job.finished.set()

    def __len__(self) -> int:
        return len(self._jobs)

    def of_user(self, user_id: int) -> list[Job]:
        return [j for j in self._jobs.values() if j.user_id == user_id]

    def cancel_user(self, user_id: int, *, by: str) -> list[Job]:
        return [j for j in self.of_user(user_id) if j.token.cancel(by=by, reason="stop")]

    def cancel_all(self, *, by: str, reason: str = "breakall") -> list[Job]:
        return [j for j in list(self._jobs.values()) if j.token.cancel(by=by, reason=reason)]
