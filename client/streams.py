"""Streams of text deltas fed by a worker thread: sync and async iteration, cancellation, stats.

Petals' generation is blocking (each token is a round trip through the servers), so every
generation runs in its own worker thread and hands text to the consumer through a queue: a
``queue.SimpleQueue`` for ``for delta in stream``, an ``asyncio.Queue`` filled with
``call_soon_threadsafe`` for ``async for``. The event loop never waits on petals. The worker
checks the ``CancelToken`` after every token, so a cancelled (or abandoned) stream stops within
one token and its inference session is closed by the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from client.errors import ClientStateError

StopReason = Literal["eos", "stop_sequence", "length", "cancelled"]
# What a job hands its stream: text deltas (str), and CapacityWait notices.
Emit = Callable[[Any], None]
# A job runs in the worker thread: (emit, should_cancel, submitted_at) -> its stats.
Job = Callable[[Emit, Callable[[], bool], float], "StreamStats"]

_counter = itertools.count(1)


class CancelToken:
    """Ask a running generation to stop; it stops within one token."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class StreamStats:
    """What one finished generation did. Times are measured from the call that started it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None
    elapsed_s: float
    stop_reason: StopReason
    trimmed_messages: int = 0  # old turns left out to fit the context window
    reused_session: bool = False  # continued an open inference session (no prefill of history)
    recoveries: int = 0  # failed servers routed around during this answer
    stall_s: tuple[float, ...] = ()  # per recovery: seconds between the tokens around it
    capacity_wait_s: float = 0.0  # seconds queued while the servers' attention caches were full

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token (None with fewer than two tokens)."""
        if self.time_to_first_token_s is None or self.completion_tokens < 2:
            return None
        decode = self.elapsed_s - self.time_to_first_token_s
        return (self.completion_tokens - 1) / decode if decode > 0 else None


@dataclass(frozen=True)
class CapacityWait:
    """A notice from the worker: the request started (True) or stopped (False) waiting in line
    because the servers report their attention caches full."""

    waiting: bool


CapacityCallback = Callable[[bool], None]


@dataclass(frozen=True)
class _Done:
    stats: StreamStats


@dataclass(frozen=True)
class _Failed:
    error: BaseException


class _Worker:
    """Runs a job in a daemon thread, forwarding deltas and the outcome to ``deliver``."""

    def __init__(self, job: Job, cancel: CancelToken, deliver: Callable[[Any], None]) -> None:
        self.job, self.cancel, self.deliver = job, cancel, deliver
        self.finished = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"petals-stream-{next(_counter)}", daemon=True
        )

    def start(self) -> None:
        self.submitted_at = time.perf_counter()
        self.thread.start()

    def _run(self) -> None:
        try:
            stats = self.job(self.deliver, lambda: self.cancel.cancelled, self.submitted_at)
        except BaseException as exc:  # handed to the consumer, who re-raises it
            self.deliver(_Failed(exc))
        else:
            self.deliver(_Done(stats))
        finally:
            self.finished.set()


class GenerationStream(Iterator[str]):
    """``for delta in stream``; then ``stream.result``. Starts on first iteration; ``close()``
    (or leaving a ``with`` block) cancels and waits until the worker has closed its session."""

    def __init__(self, job: Job, cancel: CancelToken | None = None) -> None:
        self.cancel_token = cancel or CancelToken()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._worker = _Worker(job, self.cancel_token, self._queue.put)
        self._started = False
        self._result: StreamStats | None = None
        self._error: BaseException | None = None
        self._ended = False
        # True while the request waits for server capacity; ``on_capacity_wait(waiting)`` is
        # called on each change, in the thread that iterates (or waits on) the stream.
        self.waiting_for_capacity = False
        self.on_capacity_wait: CapacityCallback | None = None

    def _notice(self, item: CapacityWait) -> None:
        if item.waiting != self.waiting_for_capacity:
            self.waiting_for_capacity = item.waiting
            if self.on_capacity_wait is not None:
                self.on_capacity_wait(item.waiting)

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        if not self._started:
            self._started = True
            self._worker.start()
        item = self._queue.get()
        while isinstance(item, CapacityWait):
            self._notice(item)
            item = self._queue.get()
        if isinstance(item, str):
            return item
        self._ended = True
        if isinstance(item, _Failed):
            self._error = item.error
            raise item.error
        self._result = item.stats
        raise StopIteration

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def wait(self, timeout: float | None = None) -> StreamStats:
        """Consume what is left (discarding it) and return the stats."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended:
            if not self._started:
                self._started = True
                self._worker.start()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError("the generation did not finish in time") from None
            if isinstance(item, CapacityWait):
                self._notice(item)
            if isinstance(item, _Failed):
                self._ended, self._error = True, item.error
                raise item.error
            if isinstance(item, _Done):
                self._ended, self._result = True, item.stats
        return self.result

    def text(self) -> str:
        """Everything the stream produces, joined (blocks until the end)."""
        pieces = list(self)
        return "".join(pieces)

    def close(self, timeout: float | None = 60.0) -> None:
        self.cancel()
        if self._started and not self._ended:
            with contextlib.suppress(Exception):  # a discarded stream's error is of no interest
                self.wait(timeout)

    @property
    def result(self) -> StreamStats:
        if self._result is None:
            raise ClientStateError("the stream has no result yet: iterate it to the end first")
        return self._result

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # an abandoned stream stops instead of running to the end
        self.cancel_token.cancel()


class AsyncGenerationStream(AsyncIterator[str]):
    """``async for delta in stream``; then ``stream.result``. Cancelling the consuming task (or
    ``aclose()``) cancels the generation; the worker thread then closes its session."""

    def __init__(self, job: Job, cancel: CancelToken | None = None) -> None:
        self.cancel_token = cancel or CancelToken()
        self._queue: asyncio.Queue[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker = _Worker(job, self.cancel_token, self._deliver)
        self._result: StreamStats | None = None
        self._ended = False
        # As GenerationStream's; ``on_capacity_wait`` is called on the event loop.
        self.waiting_for_capacity = False
        self.on_capacity_wait: CapacityCallback | None = None

    def _deliver(self, item: Any) -> None:  # called from the worker thread
        loop, target = self._loop, self._queue
        if loop is None or target is None:
            return
        try:
            loop.call_soon_threadsafe(target.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel_token.cancel()

    def _start(self) -> None:
        if self._queue is None:
            self._loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._worker.start()

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> str:
        if self._ended:
            raise StopAsyncIteration
        self._start()
        assert self._queue is not None
        try:
            item = await self._queue.get()
            while isinstance(item, CapacityWait):
                if item.waiting != self.waiting_for_capacity:
                    self.waiting_for_capacity = item.waiting
                    if self.on_capacity_wait is not None:
                        self.on_capacity_wait(item.waiting)
                item = await self._queue.get()
        except asyncio.CancelledError:
            self.cancel_token.cancel()
            raise
        if isinstance(item, str):
            return item
        self._ended = True
        if isinstance(item, _Failed):
            raise item.error
        self._result = item.stats
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancel_token.cancel()

    async def wait(self) -> StreamStats:
        async for _ in self:
            pass
        return self.result

    async def text(self) -> str:
        return "".join([piece async for piece in self])

    async def aclose(self) -> None:
        """Cancel and wait (off the loop) until the worker has finished and closed its session."""
        self.cancel()
        if self._queue is not None and not self._ended:
            with contextlib.suppress(Exception):  # a discarded stream's error is of no interest
                await self.wait()

    @property
    def finished(self) -> bool:
        return self._worker.finished.is_set()

    @property
    def result(self) -> StreamStats:
        if self._result is None:
            raise ClientStateError("the stream has no result yet: iterate it to the end first")
        return self._result

    async def __aenter__(self) -> AsyncGenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
