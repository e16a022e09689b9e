"""What every gateway route shares: auth, per-token limits, bounds, and running a generation.

Routes translate their API's request into ``GenerationParams`` and a prompt, then call
``admit`` (rate and concurrency limits), ``prepare`` (bounds, context window) and ``deltas``
(the stream, with metrics and the concurrency slot released when it ends, however it ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from fastapi import Request

from client.errors import GenerationFailed, InvalidRequest
from client.gateway.access import note_caller, note_tokens
from client.gateway.chat_prompt import PrefillPreparer
from client.gateway.errors import APIError, bad_request
from client.gateway.metrics import GatewayMetrics
from client.gateway.ratelimit import ConcurrencyLimiter, RateLimiter
from client.gateway.settings import GatewaySettings
from client.gateway.tokens import TokenStore
from client.gateway.websessions import WebSessions
from client.params import GenerationParams
from client.streams import CancelToken, StreamStats
from client.swarm_client import PreparedPrompt, Prompt, SwarmClient
from swarm.errors import SwarmUnavailable

ANONYMOUS = "anonymous"


class ClientGone(Exception):
    """The client disconnected before its answer was ready (answered 499, to nobody)."""


@dataclass
class Admission:
    """A caller's permission to run one generation; ``release()`` frees its concurrency slot."""

    caller: str
    _release: Callable[[], None]
    _released: bool = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()


@dataclass
class Outcome:
    """Filled in by ``deltas`` when the stream ends; ``waiting_for_capacity`` follows the
    stream while it waits for the servers' attention caches (``changed`` is set on each change)."""

    stats: StreamStats | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    waiting_for_capacity: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def capacity_changed(self, waiting: bool) -> None:
        self.waiting_for_capacity = waiting
        self.changed.set()


class GatewayService:
    def __init__(
        self,
        settings: GatewaySettings,
        client: SwarmClient,
        tokens: TokenStore,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings, self.client, self.tokens, self.metrics = settings, client, tokens, metrics
        self.rate = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.concurrency = ConcurrencyLimiter(settings.max_concurrent_per_token)
        self.prefills = PrefillPreparer(client)
        self.web_sessions = WebSessions(settings.web_session_hours)
        self._inflight = 0  # admitted generations, all tokens: running or queued for a slot
        self._inflight_lock = threading.Lock()

    # -- who is asking -----------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.settings.model_name or self.client.model_name

    def authenticate(self, token: str | None) -> str:
        """The caller's token name; 401 for a missing or unknown token."""
        if token is None or not token.strip():
            if self.settings.allow_anonymous:
                note_caller(ANONYMOUS)
                return ANONYMOUS
            raise APIError(
                401,
                "missing bearer token: send 'Authorization: Bearer <token>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        name = self.tokens.verify(token.strip())
        if name is not None:
            note_caller(name)
        if name is None:
            raise APIError(
                401,
                "incorrect bearer token",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return name

    @property
    def capacity(self) -> int:
        """Generations admitted at once: the client's parallel streams plus the queue."""
        return self.client.options.max_concurrent_streams + self.settings.max_queued

    def cookie_caller(self, session: str | None) -> str | None:
        """The token name behind a web chat session cookie; None once the token is revoked."""
        name = self.web_sessions.lookup(session) if session else None
        if name is None:
            return None
        if name != ANONYMOUS and not self.tokens.has(name):
            return None
        note_caller(name)
        return name

    def admit(self, caller: str) -> Admission:
        """Rate limit, a concurrency slot of the token (429 with Retry-After when over either),
        then a place in the gateway's bounded queue (503 with Retry-After when full). Checked
        before any tokenization, so a refused request costs next to nothing."""
        wait = self.rate.take(caller)
        if wait > 0:
            raise APIError(
                429,
                f"rate limit of {self.settings.rate_limit_per_minute:g} requests per minute "
                f"(burst {self.settings.rate_limit_burst}) reached for this token; retry in "
                f"{wait:.1f} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        if not self.concurrency.acquire(caller):
            raise APIError(
                429,
                f"this token already runs {self.settings.max_concurrent_per_token} generations "
                "at once (max_concurrent_per_token); wait for one to finish",
                code="concurrency_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        with self._inflight_lock:
            full = self._inflight >= self.capacity
            if not full:
                self._inflight += 1
                self.metrics.queued.set(self._inflight)
        if full:
            self.concurrency.release(caller)
            raise APIError(
                503,
                f"the gateway is busy: {self.capacity} generations are running or queued "
                "(max_concurrent_streams + max_queued); retry shortly",
                code="queue_full",
                headers={"Retry-After": "2"},
            )
        self.metrics.token_requests.labels(caller).inc()

        def release() -> None:
            self.concurrency.release(caller)
            with self._inflight_lock:
                self._inflight -= 1
                self.metrics.queued.set(self._inflight)

        return Admission(caller, release)

    def usage(self, caller: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a finished generation's tokens against its bearer token's name."""
        note_tokens(prompt_tokens, completion_tokens)
        self.metrics.token_prompt_tokens.labels(caller).inc(prompt_tokens)
        self.metrics.token_completion_tokens.labels(caller).inc(completion_tokens)

    # -- bounds ------------------------------------------------------------------------------
    def check_model(self, name: str | None, *, field: str = "model") -> None:
        if name is None or name in (self.model_id, self.client.swarm.model):
            return
        raise APIError(
            404 if field == "model" else 400,
            f"{field} = {name!r}: this gateway serves only {self.model_id!r}",
            param=field,
            code="model_not_found",
        )

    def check_prompt_chars(self, chars: int, *, field: str) -> None:
        limit = self.settings.max_prompt_chars
        if chars > limit:
            raise APIError(
                400,
                f"{field}: the prompt is {chars} characters; this gateway's limit is {limit} "
                "(max_prompt_chars)",
                param=field,
                code="prompt_too_long",
            )

    def max_new_tokens(self, requested: int | None, *, field: str) -> int:
        limit = self.settings.max_new_tokens_limit
        if requested is None:
            return self.settings.default_max_new_tokens
        if requested > limit:
            raise APIError(
                400,
                f"{field} = {requested}: this gateway's limit is {limit} (max_new_tokens_limit)",
                param=field,
                code="invalid_value",
            )
        return requested

    def params(self, **values: object) -> GenerationParams:
        try:
            return GenerationParams.build(**values)
        except InvalidRequest as exc:
            raise bad_request(exc) from None

    async def prepare(
        self,
        prompt: Prompt,
        params: GenerationParams,
        admission: Admission | None = None,
        *,
        prefill: str | None = None,
    ) -> PreparedPrompt:
        """Tokenize and fit (after ``admit``: the costly step comes last); a refused prompt
        gives the admission back. ``prefill``: assistant text the answer continues."""
        try:
            if prefill is not None and not isinstance(prompt, str):
                return await asyncio.to_thread(self.prefills.prepare, prompt, prefill, params)
            return await self.client.aprepare(prompt, params)
        except InvalidRequest as exc:
            if admission is not None:
                admission.release()
            raise bad_request(exc) from None
        except BaseException:
            if admission is not None:
                admission.release()
            raise

    # -- generation --------------------------------------------------------------------------
    async def deltas(
        self, route: str, prepared: PreparedPrompt, admission: Admission, outcome: Outcome
    ) -> AsyncGenerator[str, None]:
        """The answer's text deltas. However the consumer stops (end, error, disconnect: the
        task is cancelled), the generation is cancelled and the caller's slot released."""
        stream = self.client.astream(prepared, cancel=outcome.cancel)
        stream.on_capacity_wait = outcome.capacity_changed
        self.metrics.active.labels(route).inc()
        try:
            async for delta in stream:
                yield delta
            outcome.stats = stream.result
            self.metrics.observe(route, stream.result)
            self.usage(admission.caller, prepared.prompt_tokens, stream.result.completion_tokens)
        except (GenerationFailed, SwarmUnavailable) as exc:
            self.metrics.errors.labels(route, "swarm_unavailable").inc()
            raise APIError(503, str(exc), code="swarm_unavailable") from None
        finally:
            if outcome.stats is None:
                outcome.cancel.cancel()  # the worker stops within a token and closes its session
                self.metrics.stops.labels(route, "cancelled").inc()
            self.metrics.active.labels(route).dec()
            admission.release()

    async def collect(
        self,
        request: Request | None,
        route: str,
        prepared: PreparedPrompt,
        admission: Admission,
    ) -> tuple[str, StreamStats]:
        """The whole answer, for non-streaming replies; stops early if the client goes away."""
        outcome = Outcome()

        async def join() -> str:
            return "".join([d async for d in self.deltas(route, prepared, admission, outcome)])

        task = asyncio.ensure_future(join())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and request is not None and await request.is_disconnected():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise ClientGone
        except asyncio.CancelledError:
            task.cancel()
            raise
        text = task.result()
        assert outcome.stats is not None
        return text, outcome.stats


def finish_reason(stats: StreamStats | None) -> str:
    """OpenAI's finish_reason for our stop reason."""
    if stats is not None and stats.stop_reason == "length":
        return "length"
    return "stop"
