"""The bot's thin adapter to the client library (``client.SwarmClient``): chat messages in,
streamed text out, with the bot's cancellation and timeouts.

``SwarmClient`` runs every generation in its own worker thread on one shared distributed model,
so a new conversation looking for its route never blocks the event loop or the other answers
(the old course bot froze every chat while one route was being found). The client is started
lazily and, after the swarm failed, replaced by a fresh one on a later question, so the bot
starts and keeps answering "swarm down" even while the swarm is away.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bot.errors import AnswerFailed, AnswerTimeout, SwarmDown
from bot.jobs import CancelToken
from bot.prompt import ChatMessage
from swarm.errors import ConfigError, KitError, SwarmUnavailable
from swarm.swarm_settings import SwarmSettings

if TYPE_CHECKING:
    from client import ClientSettings, SwarmClient
    from client.failover import RecoveryMetrics

log = logging.getLogger(__name__)
MAX_DETAIL = 160  # characters of a swarm error shown to students


@dataclass(frozen=True)
class Generation:
    """A finished (or stopped) answer and its timings."""

    text: str
    tokens: int
    ttft_s: float | None
    tokens_per_s: float | None
    elapsed_s: float
    stopped_by: str  # eos | stop_sequence | length | cancelled
    model: str


TextSink = Callable[[str], None]
WaitSink = Callable[[bool], None]  # True while the servers' caches are full and the answer waits


class Engine(Protocol):
    """What the bot needs from a model: a label, a window, a token counter and streaming."""

    label: str
    context_window: int

    async def prepare(self) -> None:
        """Called once at start; must not wait for the swarm."""

    async def connect(self) -> None:
        """Be ready to count tokens and generate; raises SwarmDown when the swarm is away."""

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int: ...

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_new_tokens: int,
        on_text: TextSink,
        cancel: CancelToken,
        first_token_timeout_s: float,
        timeout_s: float,
        on_waiting: WaitSink | None = None,
    ) -> Generation: ...

    async def close(self) -> None: ...


def model_label(model: str) -> str:
    """A short name for footers and the database: the last part of a name or directory."""
    return Path(model.rstrip("/")).name or model


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


class ClientEngine:
    """One model on the private swarm through ``client.SwarmClient``."""

    def __init__(
        self,
        swarm: SwarmSettings,
        options: ClientSettings | None = None,
        *,
        stop_sequences: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 0.9,
        reconnect_after_s: float = 5.0,
        extra_params: dict[str, Any] | None = None,
        client: SwarmClient | None = None,
    ) -> None:
        """``client``: an already started client to share (this engine will not close it)."""
        self.swarm = swarm
        self.options = options
        self.label = model_label(swarm.model)
        self.context_window = 2048  # the model's real window once connected
        self.stop_sequences = tuple(stop_sequences)
        self.temperature = temperature
        self.top_p = top_p
        self.reconnect_after_s = reconnect_after_s
        self.extra_params = dict(extra_params or {})  # e.g. min_new_tokens in tests
        self._client: SwarmClient | None = client
        self._shared = client is not None
        if client is not None:
            self.context_window = client.context_window
        self._lock = threading.Lock()  # one start at a time
        self._failed_at = float("-inf")
        self._failure = ""
        self._closed = False

    # ---------------------------------------------------------------- lifecycle
    @property
    def client(self) -> SwarmClient:
        if self._client is None:
            raise SwarmDown("not connected to the private swarm")
        return self._client

    @property
    def recovery_metrics(self) -> RecoveryMetrics | None:
        """The running client's failover counters (None while not connected)."""
        client = self._client
        return None if client is None else client.recovery_metrics

    def open(self) -> SwarmClient:
        """Blocking: start a client (or return the running one); raises SwarmDown."""
        from client import SwarmClient

        with self._lock:
            if self._closed:
                raise SwarmDown("the bot is shutting down")
            if self._client is not None:
                return self._client
            if time.monotonic() - self._failed_at < self.reconnect_after_s:
                raise SwarmDown(self._failure)
            try:
                client = SwarmClient(self.swarm, self.options).start()
            except ConfigError:
                raise
            except Exception as exc:  # SwarmUnavailable, a daemon that would not start, ...
                self._failed_at = time.monotonic()
                self._failure = f"cannot reach the private swarm ({_detail(exc)})"
                log.warning("joining the swarm for %s failed: %s", self.label, exc)
                raise SwarmDown(self._failure) from exc
            self._client, self._shared = client, False
            self.context_window = client.context_window
            log.info("joined the private swarm for %s", self.label)
            return client

    def _open_quietly(self) -> None:
        try:
            self.open()
        except SwarmDown as exc:
            log.warning("not connected yet (%s); the next question tries again", exc)

    def _drop(self, client: SwarmClient) -> None:
        """Forget a client whose swarm failed; the next question starts a fresh one."""
        with self._lock:
            if self._client is client:
                self._client = None
        if self._shared:
            return  # its owner decides
        try:
            client.close()
        except Exception:  # leaving a broken swarm may fail too; nothing else to do
            log.debug("closing a failed client", exc_info=True)

    async def prepare(self) -> None:
        task = asyncio.get_running_loop().run_in_executor(None, self._open_quietly)
        task.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def connect(self) -> None:
        if self._client is None:
            await asyncio.to_thread(self.open)

    def shutdown(self) -> None:
        """Blocking: leave the swarm; no more questions."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None and not self._shared:
            client.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)

    # ---------------------------------------------------------------- generation
    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        client = self.client
        return len(client.encode(client.render(messages), add_special_tokens=False))

    def params(self, max_new_tokens: int) -> Any:
        from client import GenerationParams

        return GenerationParams.build(
            max_new_tokens=max_new_tokens,
            do_sample=self.temperature > 0,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop_sequences,
            **self.extra_params,
        )

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_new_tokens: int,
        on_text: TextSink,
        cancel: CancelToken,
        first_token_timeout_s: float,
        timeout_s: float,
        on_waiting: WaitSink | None = None,
    ) -> Generation:
        """Stream an answer to ``on_text`` (on the event loop). Cancelled before the first
        token, it returns at once; the worker thread stops at that token."""
        from client import CancelToken as StreamCancel
        from client import InvalidRequest

        client = self.client
        started = time.monotonic()
        try:
            prepared = await client.aprepare(messages, self.params(max_new_tokens))
        except InvalidRequest as exc:
            raise AnswerFailed(f"the question cannot be sent to the model: {_detail(exc)}") from exc
        stop = StreamCancel()
        cancel.add_callback(stop.cancel)
        stream = client.astream(prepared, cancel=stop)
        stream.on_capacity_wait = on_waiting
        first = asyncio.Event()

        async def consume() -> Any:
            async for delta in stream:
                first.set()
                on_text(delta)
            return stream.result

        work = asyncio.create_task(consume(), name="swarm-stream")
        firsts = asyncio.ensure_future(first.wait())
        stopped = asyncio.ensure_future(cancel.wait())
        try:
            done, _ = await asyncio.wait(
                {work, firsts, stopped},
                timeout=first_token_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                cancel.cancel(reason="timeout")
                raise AnswerTimeout(
                    f"the swarm gave no first token within {first_token_timeout_s:g} s"
                )
            if work not in done and not first.is_set():  # cancelled before the first token
                return Generation(
                    "", 0, None, None, time.monotonic() - started, "cancelled", self.label
                )
            remaining = max(0.0, timeout_s - (time.monotonic() - started))
            try:
                stats = await asyncio.wait_for(asyncio.shield(work), remaining)
            except TimeoutError:
                cancel.cancel(reason="timeout")
                stats = await work  # ends within one token
        except (SwarmUnavailable, KitError) as exc:
            if isinstance(exc, AnswerFailed):
                raise
            self._drop(client)
            raise SwarmDown(f"the swarm could not answer ({_detail(exc)})") from exc
        finally:
            firsts.cancel()
            stopped.cancel()
            if not work.done():
                stop.cancel()
                work.cancel()
        return Generation(
            text=stats.text,
            tokens=stats.completion_tokens,
            ttft_s=stats.time_to_first_token_s,
            tokens_per_s=stats.tokens_per_second,
            elapsed_s=stats.elapsed_s,
            stopped_by=stats.stop_reason,
            model=self.label,
        )
