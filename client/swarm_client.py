"""``SwarmClient``: the one way the kit's programs talk to the private swarm.

It opens one distributed model (explicit private bootstrap peers, ``allowed_servers`` = the
trusted PeerIDs, so no other server can be on a route) and its tokenizer, and serves many
generations at once: each runs in its own worker thread (see client/streams.py), all sharing
the model, whose per-token RPCs run on hivemind's background event loop. Opening a session for
one caller therefore never stalls the tokens of another.

Usage::

    with SwarmClient(SwarmSettings.load()) as client:
        for delta in client.stream([{"role": "user", "content": "Hi!"}]):
            print(delta, end="", flush=True)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.conversation import Conversation
from client.errors import ClientStateError, PromptTooLong
from client.failover import FailureTracker, PeerQuarantine, RecoveryMetrics
from client.params import GenerationParams
from client.session import SwarmSession, swarm_failure
from client.settings import ClientSettings
from client.streams import (
    AsyncGenerationStream,
    CancelToken,
    Emit,
    GenerationStream,
    Job,
    StreamStats,
)
from client.templates import (
    ChatTemplate,
    Message,
    encode_chat,
    fit_messages,
    make_template,
    normalize_messages,
)
from swarm.errors import SwarmUnavailable
from swarm.swarm_settings import SwarmSettings

Prompt = str | Sequence[Message]
# open_distributed_model's shape: (SwarmSettings, **petals kwargs) -> a context manager of the model
OpenModel = Callable[..., AbstractContextManager[Any]]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt tokenized and checked against the context window, with its resolved params.
    ``client.prepare()`` makes one; streaming it cannot fail on bad input any more."""

    input_ids: tuple[int, ...]
    params: GenerationParams
    stop_sequences: tuple[str, ...] = ()  # the chat template's (the caller's are in params)
    trimmed_messages: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)


class SwarmClient:
    """Streams answers from the trusted servers of the private swarm; see the module docstring.

    Refuses, at construction, settings without bootstrap peers or trusted servers (ConfigError).
    ``start()`` joins the swarm (blocking, seconds); ``close()`` leaves it without leftovers.
    """

    def __init__(
        self,
        swarm: SwarmSettings,
        options: ClientSettings | None = None,
        *,
        open_model: OpenModel | None = None,
    ) -> None:
        swarm.require_initial_peers()
        swarm.require_trusted_servers()
        self.swarm = swarm
        self.options = options if options is not None else ClientSettings()
        # How the distributed model is opened: client.petals_model.open_distributed_model
        # unless a caller (a test of the health probe) stands in for joining the swarm.
        self._open_model = open_model
        self._stack: ExitStack | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._template: ChatTemplate | None = None
        self._context_window = 0
        self._eos_ids: list[int] = []
        self._slots = threading.BoundedSemaphore(self.options.max_concurrent_streams)
        self._encode_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()
        self._running = 0
        self._idle = threading.Condition()
        self.quarantine = PeerQuarantine()
        self.recovery_metrics = RecoveryMetrics()
        self._failures: FailureTracker | None = None
        self._quarantine_checked = 0.0
        self._sessions: weakref.WeakSet[SwarmSession] = weakref.WeakSet()
        self._reaper: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> SwarmClient:
        """Join the swarm, load the tokenizer and fetch the route table (idempotent)."""
        with self._start_lock:
            if self._closed:
                raise ClientStateError("this SwarmClient is closed; make a new one")
            if self._model is not None:
                return self
            from transformers import AutoTokenizer

            from client.petals_model import open_distributed_model  # applies swarm.compat

            open_model = self._open_model or open_distributed_model
            stack = ExitStack()
            try:
                model = stack.enter_context(
                    open_model(
                        self.swarm,
                        show_route=False,
                        # Petals' own retry replays history and breaks (issue #587): one attempt,
                        # then the kit recovers (client/failover.py).
                        max_retries=1,
                        connect_timeout=self.options.connect_timeout,
                    )
                )
                manager = model.transformer.h.sequence_manager
                manager.config.request_timeout = self.options.step_timeout
                failures = FailureTracker(manager)
                # After the model: its DHT forks a process, and a tokenizer used before a fork
                # disables its own parallelism with a warning.
                tokenizer = AutoTokenizer.from_pretrained(self.swarm.model)
                template = make_template(self.options.chat_template, self.swarm.model, tokenizer)
                self._warm_up(model)
            except BaseException:
                stack.close()
                raise
            limit = int(getattr(model.config, "max_position_embeddings", 2048))
            eos = [tokenizer.eos_token_id]
            for token in template.stop_tokens:
                token_id = tokenizer.convert_tokens_to_ids(token)
                if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                    eos.append(token_id)
            self._context_window = min(limit, self.options.context_window or limit)
            self._template, self._eos_ids = template, eos
            self._stack, self._model, self._tokenizer = stack, model, tokenizer
            self._failures = failures
            self._reaper = threading.Thread(
                target=self._release_idle_sessions, name="petals-session-reaper", daemon=True
            )
            self._reaper.start()
            return self

    def _warm_up(self, model: Any) -> None:
        """Fetch the trusted servers' route table now, so the first request does not wait for
        it, and fail here (SwarmUnavailable) if no trusted server serves the first block."""
        attempts = max(2, self.options.max_retries + 1)
        for attempt in range(attempts):
            try:
                _ = model.transformer.h.sequence_manager.rpc_info
                return
            except Exception as exc:
                failure = swarm_failure(exc)
                if failure is None:
                    raise
                if attempt + 1 == attempts:  # each failure took that server off the table
                    raise SwarmUnavailable(f"cannot use the private swarm: {failure}") from exc

    async def astart(self) -> SwarmClient:
        await asyncio.to_thread(self.start)
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Leave the swarm: running generations are cancelled (each stops within a token and
        closes its session), then the client's DHT process and petals' threads stop."""
        self._closing.set()
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0, timeout)
        with self._start_lock:
            self._closed = True
            stack, self._stack = self._stack, None
            self._model = None
        if stack is not None:
            stack.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> SwarmClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SwarmClient:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- what the model is -------------------------------------------------------------------
    def _require(self) -> None:
        if self._model is None:
            raise ClientStateError(
                "the SwarmClient is closed" if self._closed else "call start() first"
            )

    @property
    def started(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        self._require()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self._require()
        return self._tokenizer

    @property
    def template(self) -> ChatTemplate:
        self._require()
        assert self._template is not None
        return self._template

    @property
    def model_name(self) -> str:
        """The model's short name (a local directory's last part)."""
        return Path(self.swarm.model.rstrip("/")).name or self.swarm.model

    @property
    def context_window(self) -> int:
        """Tokens of prompt plus answer that one generation may use."""
        self._require()
        return self._context_window

    @property
    def eos_token_ids(self) -> list[int]:
        return list(self._eos_ids)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self._eos_ids[0])

    # -- prompts -----------------------------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        # Fast tokenizers are not meant for concurrent encode calls ("Already borrowed").
        with self._encode_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text the chat template makes of ``messages`` (with the answer's header)."""
        return self.template.render(normalize_messages(messages))

    def prepare(self, prompt: Prompt, params: GenerationParams | None = None) -> PreparedPrompt:
        """Tokenize and check a prompt: text as is, or messages through the chat template with
        the oldest turns left out until prompt plus ``max_new_tokens`` fit the context window."""
        params = params or GenerationParams()
        budget = self.context_window - params.max_new_tokens
        if isinstance(prompt, str):
            ids = self.encode(prompt)
            if len(ids) > budget:
                raise PromptTooLong(
                    f"prompt is {len(ids)} tokens and max_new_tokens is "
                    f"{params.max_new_tokens}: together more than the context window of "
                    f"{self.context_window} tokens",
                    field="prompt",
                )
            return PreparedPrompt(tuple(ids), params)
        messages = normalize_messages(prompt)
        if budget < 1:
            raise PromptTooLong(
                f"max_new_tokens = {params.max_new_tokens} leaves no room for a prompt in the "
                f"context window of {self.context_window} tokens",
                field="max_new_tokens",
            )
        rendered: dict[int, list[int]] = {}

        def count(kept: Sequence[Message]) -> int:
            with self._encode_lock:  # message text is never read as control tokens
                ids, _ = encode_chat(self.tokenizer, self.template.render, kept)
            rendered[len(kept)] = ids
            return len(ids)

        kept, dropped, _ = fit_messages(messages, count, budget)
        return PreparedPrompt(
            tuple(rendered[len(kept)]), params, self.template.stop_sequences, dropped
        )

    async def aprepare(
        self, prompt: Prompt, params: GenerationParams | None = None
    ) -> PreparedPrompt:
        return await asyncio.to_thread(self.prepare, prompt, params)

    # -- generation --------------------------------------------------------------------------
    def stream(
        self,
        prompt: Prompt | PreparedPrompt,
        params: GenerationParams | None = None,
        *,
        cancel: CancelToken | None = None,
    ) -> GenerationStream:
        """Stream an answer as text deltas (sync). ``prompt``: raw text, chat messages
        (``[{"role": "user", "content": ...}]``) or a PreparedPrompt (then params come from it)."""
        return GenerationStream(self._one_shot(prompt, params), cancel)

    def astream(
        self,
        prompt: Prompt | PreparedPrompt,
        params: GenerationParams | None = None,
        *,
        cancel: CancelToken | None = None,
    ) -> AsyncGenerationStream:
        """Like ``stream`` for ``async for``; the petals work stays in a worker thread."""
        return AsyncGenerationStream(self._one_shot(prompt, params), cancel)

    def generate(
        self,
        prompt: Prompt | PreparedPrompt,
        params: GenerationParams | None = None,
        *,
        cancel: CancelToken | None = None,
    ) -> StreamStats:
        """The whole answer at once (``.text``), with its stats."""
        return self.stream(prompt, params, cancel=cancel).wait()

    async def agenerate(
        self,
        prompt: Prompt | PreparedPrompt,
        params: GenerationParams | None = None,
        *,
        cancel: CancelToken | None = None,
    ) -> StreamStats:
        return await self.astream(prompt, params, cancel=cancel).wait()

    def conversation(self, system: str | None = None) -> Conversation:
        """A multi-turn chat that keeps its history and, where it can, its inference session."""
        return Conversation(self, system)

    def open_session(self, max_length: int) -> SwarmSession:
        """An inference session for up to ``max_length`` tokens, continued across calls; its
        servers' cache is released after ``session_idle_timeout`` and replayed on next use."""
        self._require()
        return SwarmSession(self, max_length)

    def _one_shot(self, prompt: Prompt | PreparedPrompt, params: GenerationParams | None) -> Job:
        self._require()
        if isinstance(prompt, PreparedPrompt) and params is not None:
            raise ClientStateError("a PreparedPrompt carries its params; pass them to prepare()")

        def job(emit: Emit, should_cancel: Any, started_at: float) -> StreamStats:
            prepared = (
                prompt if isinstance(prompt, PreparedPrompt) else self.prepare(prompt, params)
            )
            length = prepared.prompt_tokens + prepared.params.max_new_tokens
            with SwarmSession(self, length) as session:
                return session.run(
                    prepared.input_ids,
                    prepared.params,
                    emit,
                    should_cancel,
                    started_at,
                    stop_sequences=prepared.stop_sequences,
                    trimmed_messages=prepared.trimmed_messages,
                )

        return job

    # -- plumbing for sessions ---------------------------------------------------------------
    @property
    def closing(self) -> bool:
        """True once close() began: running generations stop at their next token."""
        return self._closing.is_set()

    @contextmanager
    def stream_slot(self) -> Iterator[None]:
        """One of ``max_concurrent_streams`` generation slots (waits for a free one); close()
        waits until every slot is back."""
        with self._idle:
            self._running += 1
        try:
            with self._slots:
                yield
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def track_session(self, session: SwarmSession) -> None:
        """Sessions are watched by the idle reaper (weakly: a dropped one is just forgotten)."""
        self._sessions.add(session)

    @property
    def failures(self) -> FailureTracker:
        self._require()
        assert self._failures is not None
        return self._failures

    def quarantine_peer(self, peer_id: str, blocks: str) -> None:
        """Keep a failed server off every new route until it announces itself again."""
        from client.routes import apply_blocklist, record_expirations

        manager = self.model.transformer.h.sequence_manager
        seen = record_expirations(manager.dht, list(manager.block_uids), frozenset([peer_id]))
        if self.quarantine.add(peer_id, blocks, seen.get(peer_id)):
            self.recovery_metrics.quarantined()
            logger.warning(
                "server %s (blocks %s) failed: kept off new routes until it announces again",
                peer_id,
                blocks,
            )
        apply_blocklist(manager, self.quarantine.peers)

    def refresh_quarantine(self, min_interval: float = 1.0) -> None:
        """Readmit quarantined servers that announced themselves again (reads the DHT, at most
        once per ``min_interval`` seconds, and only while some server is quarantined)."""
        if not len(self.quarantine) or time.monotonic() - self._quarantine_checked < min_interval:
            return
        from client.routes import apply_blocklist, record_expirations

        self._quarantine_checked = time.monotonic()
        manager = self.model.transformer.h.sequence_manager
        latest = record_expirations(manager.dht, list(manager.block_uids), self.quarantine.peers)
        back = self.quarantine.readmit(latest)
        if back:
            logger.info("servers announced again, back on routes: %s", ", ".join(back))
            apply_blocklist(manager, self.quarantine.peers)

    def _release_idle_sessions(self) -> None:
        """Free the servers' cache of sessions idle longer than ``session_idle_timeout`` (the
        next turn replays); runs in a daemon thread until close()."""
        timeout = self.options.session_idle_timeout
        while not self._closing.wait(min(5.0, timeout / 4)):
            for session in list(self._sessions):
                if session.closed or time.monotonic() - session.last_used < timeout:
                    continue
                if session._lock.acquire(blocking=False):  # not while it answers
                    try:
                        session.release()
                    finally:
                        session._lock.release()

    def new_petals_session(self, max_length: int) -> Any:
        """A petals InferenceSession (it connects to the servers on its first step). Made
        directly, not via ``model.inference_session()``: that context manager also sets a
        context variable of the thread that opens it, and our sessions outlive threads."""
        from petals.client.inference_session import InferenceSession

        return InferenceSession(self.model.transformer.h.sequence_manager, max_length)
