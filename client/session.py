"""One petals inference session on the trusted servers, continued across generate calls.

The servers keep the session's attention cache (``max_length`` tokens, reserved when the first
step arrives), so a later call sends only its new tokens. Petals' ``generate(session=...)``
prepends the tokens the session already holds and re-sends just the last one; we track the
token ids so callers can tell whether a new prompt extends what the session holds, and so that a
session can be released (idle, failed server, full caches) and later replayed on a new route.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from client.errors import ClientStateError, GenerationFailed, InvalidRequest
from client.failover import RouteFailed, is_capacity_error, missing_blocks_error
from client.generation import GenerationResult, StreamState
from client.params import GenerationParams
from client.routes import close_route, open_route
from client.streams import (
    AsyncGenerationStream,
    CancelToken,
    CapacityWait,
    Emit,
    GenerationStream,
    StreamStats,
)

if TYPE_CHECKING:
    from client.swarm_client import SwarmClient

logger = logging.getLogger(__name__)


def swarm_failure(exc: BaseException) -> GenerationFailed | None:
    """The kit's error for a failure of the swarm (not of our code), else None."""
    from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError, P2PHandlerError
    from petals.client.routing.sequence_manager import MissingBlocksError

    if isinstance(exc, MissingBlocksError):
        blocks = str(exc).split("blocks", 1)[-1].split("are online", 1)[0].strip()
        return GenerationFailed(f"no trusted server is online for blocks {blocks}")
    if isinstance(exc, TimeoutError | ConnectionError | P2PDaemonError | P2PHandlerError):
        return GenerationFailed(f"the trusted servers did not answer: {exc!r}")
    return None


class SwarmSession:
    """An inference session: ``stream(text)`` continues from what it already holds.

    Used by the WebSocket API (chat.petals.dev's ``open_inference_session``) and, internally, by
    ``Conversation``. Not for two generations at once (a second waits for the first).
    """

    def __init__(self, client: SwarmClient, max_length: int) -> None:
        if not 1 <= max_length <= client.context_window:
            raise InvalidRequest(
                f"max_length = {max_length}: must be within 1..{client.context_window} "
                "(the context window)",
                field="max_length",
            )
        self.client = client
        self.max_length = max_length
        self._session: Any = None
        self._token_ids: list[int] = []
        self._lock = threading.RLock()  # held while answering (the idle reaper skips it)
        self.closed = False
        self.last_used = time.monotonic()
        client.track_session(self)

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Every token the session holds (prompts and answers so far)."""
        return tuple(self._token_ids)

    @property
    def room(self) -> int:
        return self.max_length - len(self._token_ids)

    def can_continue(self, input_ids: Sequence[int], max_new_tokens: int) -> bool:
        """Whether ``input_ids`` extends what the session holds and fits its reservation (a
        released session is continued by replaying what it held)."""
        held = self._token_ids
        return (
            not self.closed
            and 0 < len(held) < len(input_ids)
            and list(input_ids[: len(held)]) == held
            and len(input_ids) + max_new_tokens <= self.max_length
        )

    # -- public streaming -------------------------------------------------------------------
    def stream(
        self,
        text: str | None,
        params: GenerationParams | None = None,
        *,
        stop: Sequence[str] = (),
        cancel: CancelToken | None = None,
    ) -> GenerationStream:
        """Append ``text`` (None: just continue) and stream the answer."""
        return GenerationStream(self._job(text, params, stop), cancel)

    def astream(
        self,
        text: str | None,
        params: GenerationParams | None = None,
        *,
        stop: Sequence[str] = (),
        cancel: CancelToken | None = None,
    ) -> AsyncGenerationStream:
        return AsyncGenerationStream(self._job(text, params, stop), cancel)

    def _job(
        self, text: str | None, params: GenerationParams | None, stop: Sequence[str]
    ) -> Callable[[Emit, Callable[[], bool], float], StreamStats]:
        params = params or GenerationParams()

        def job(emit: Emit, should_cancel: Callable[[], bool], started_at: float) -> StreamStats:
            with self._lock:
                if text is None:
                    new_ids: list[int] = []
                    if not self._token_ids:
                        raise InvalidRequest(
                            "inputs: the first generate of a session needs inputs", field="inputs"
                        )
                else:
                    new_ids = self.client.encode(text, add_special_tokens=not self._token_ids)
                return self.run(
                    new_ids, params, emit, should_cancel, started_at, stop_sequences=stop
                )

        return job

    # -- the blocking part (worker threads only) ---------------------------------------------
    def run(
        self,
        new_ids: Sequence[int],
        params: GenerationParams,
        emit: Emit,
        should_cancel: Callable[[], bool],
        started_at: float,
        *,
        stop_sequences: Sequence[str] = (),
        trimmed_messages: int = 0,
    ) -> StreamStats:
        """Feed ``new_ids`` and generate; blocks for the whole answer, recovering from failed
        servers (see client/failover.py) and waiting while their caches are full."""
        if self.closed:
            raise ClientStateError("this inference session is closed")
        needed = len(self._token_ids) + len(new_ids) + params.max_new_tokens
        if needed > self.max_length:
            raise InvalidRequest(
                f"max_new_tokens = {params.max_new_tokens}: the session holds "
                f"{len(self._token_ids)} tokens and this input adds {len(new_ids)}; only "
                f"{self.max_length} fit (its max_length)",
                field="max_new_tokens",
            )
        client = self.client

        def stop_now() -> bool:
            return should_cancel() or client.closing

        with self._lock, client.stream_slot():
            if stop_now():
                self.close()
                return StreamStats("", len(new_ids), 0, None, 0.0, "cancelled", trimmed_messages)
            if time.monotonic() - self.last_used >= client.options.session_idle_timeout:
                self.release()  # the servers may have dropped it: replay instead
            reused = self._session is not None and bool(self._token_ids)
            state = StreamState(
                client.tokenizer, emit, tuple(stop_sequences) + params.stop, stop_now
            )
            state.started = started_at
            try:
                result, waited = self._generate(list(new_ids), params, state, emit)
            except BaseException:
                self.close()
                raise
            if self._session is not None:  # None: cancelled while waiting for capacity
                self._token_ids = self._session.output_ids[0].tolist()
            self.last_used = time.monotonic()
            if result.stopped_by == "cancelled":
                self.close()  # free the servers' cache now, not when the session times out
        return StreamStats(
            text=result.text,
            prompt_tokens=len(new_ids),
            completion_tokens=len(result.token_ids),
            time_to_first_token_s=result.time_to_first_token_s,
            elapsed_s=result.elapsed_s,
            stop_reason=result.stopped_by,  # type: ignore[arg-type]
            trimmed_messages=trimmed_messages,
            reused_session=reused,
            recoveries=len(state.stalls),
            stall_s=tuple(state.stalls),
            capacity_wait_s=waited,
        )

    def _generate(
        self, new_ids: list[int], params: GenerationParams, state: StreamState, emit: Emit
    ) -> tuple[GenerationResult, float]:
        """Generation attempts: the first continues the open session (if any); after a failure,
        a fresh session on a new route gets everything so far as its prompt."""
        import torch

        from client.generation import stream_generate

        client = self.client
        held = list(self._token_ids)
        recoveries, first_failure, waited, wait_started = 0, None, 0.0, None

        in_line = [False]  # waiting for capacity right now (ends at the first token)

        def stop_waiting() -> None:
            if in_line[0]:
                in_line[0] = False
                client.recovery_metrics.capacity_wait(-1)
                emit(CapacityWait(False))

        while True:
            produced = list(state.token_ids)
            if self._session is None:
                client.refresh_quarantine()
                self._session = client.new_petals_session(self.max_length)
                ids = held + new_ids + produced  # a fresh prefill of all the text so far
            else:
                ids = new_ids
            client.failures.take()  # forget an older failure of this thread
            try:
                if not self._session._server_sessions:
                    open_route(self._session, self.max_length)
                route_config = self._session.kit_route_config
                # The first step is a prefill (the whole prompt); after it, one token per step.
                route_config.request_timeout = client.options.step_timeout

                def decoding(config: Any = route_config) -> None:
                    config.request_timeout = client.options.token_timeout
                    stop_waiting()

                state.on_token = decoding
                inputs = torch.tensor([ids], dtype=torch.long) if ids else None
                kwargs = params.generate_kwargs()
                if kwargs.get("min_new_tokens"):  # counts from this attempt's prompt
                    kwargs["min_new_tokens"] = max(1, kwargs["min_new_tokens"] - len(produced))
                with torch.no_grad():
                    result = stream_generate(
                        client.model,
                        client.tokenizer,
                        inputs,
                        max_new_tokens=params.max_new_tokens - len(produced),
                        session=self._session,
                        state=state,
                        eos_token_id=client.eos_token_ids,
                        pad_token_id=client.pad_token_id,
                        **kwargs,
                    )
                stop_waiting()
                for stall in state.stalls:
                    client.recovery_metrics.recovered(stall)
                return result, waited
            except Exception as exc:
                if is_capacity_error(exc):
                    self.release()
                    if wait_started is None:
                        wait_started = time.monotonic()
                        in_line[0] = True
                        client.recovery_metrics.capacity_wait(+1)
                        emit(CapacityWait(True))
                        logger.warning(
                            "waiting in line: the servers' attention caches are full (%s)", exc
                        )
                    waited = time.monotonic() - wait_started
                    if state.should_cancel is not None and state.should_cancel():
                        stop_waiting()
                        elapsed = time.perf_counter() - state.started
                        cancelled = GenerationResult(
                            state.emitted, state.token_ids, None, elapsed, "cancelled"
                        )
                        return cancelled, waited
                    if waited >= client.options.capacity_wait_timeout:
                        stop_waiting()
                        raise GenerationFailed(
                            f"the trusted servers' attention caches stayed full for "
                            f"{waited:.0f}s (capacity_wait_timeout)"
                        ) from exc
                    time.sleep(0.5)  # a queue: others' sessions end or go idle
                    continue
                if wait_started is not None:
                    stop_waiting()
                    wait_started = None
                failure = self._failure(exc)
                if failure is None:
                    raise
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                recoveries += 1
                spent = now - first_failure
                if recoveries > client.options.max_retries or (
                    spent >= client.options.recovery_timeout
                ):
                    client.recovery_metrics.gave_up()
                    raise GenerationFailed(
                        f"gave up after {recoveries - 1} recoveries in {spent:.1f}s "
                        f"(max_retries {client.options.max_retries}, recovery_timeout "
                        f"{client.options.recovery_timeout:g}s): {failure}"
                    ) from exc
                state.resumed_from = state.last_token_at or time.perf_counter()
                logger.warning(
                    "recovering (%d/%d) after %d generated tokens: %s",
                    recoveries,
                    client.options.max_retries,
                    len(state.token_ids),
                    failure,
                )

    def _failure(self, exc: BaseException) -> GenerationFailed | None:
        """Handle a failed attempt: quarantine the server petals blamed, drop the session and
        say what failed; None when ``exc`` is not the swarm's fault (a bug: re-raised)."""
        from petals.client.routing.sequence_manager import MissingBlocksError

        client = self.client
        cause = exc.cause if isinstance(exc, RouteFailed) else exc
        peer = exc.peer_id if isinstance(exc, RouteFailed) else client.failures.take()
        if isinstance(exc, MissingBlocksError):
            self.release()
            client.recovery_metrics.gave_up()
            raise missing_blocks_error(exc, sorted(client.quarantine.peers)) from exc
        if peer is None and swarm_failure(cause) is None:
            return None
        blocks = exc.blocks if isinstance(exc, RouteFailed) else self._blocks_of(peer)
        if peer is not None:
            client.quarantine_peer(peer, blocks)
        self.release()
        who = f"server ...{peer[-6:]} (blocks {blocks})" if peer else "a server"
        return GenerationFailed(f"{who} failed: {cause!r}")

    def _blocks_of(self, peer: str | None) -> str:
        spans = getattr(self._session, "_server_sessions", ()) or ()
        for span in spans:
            if str(span.span.peer_id) == peer:
                return f"{span.span.start}:{span.span.end}"
        return "?"

    def release(self) -> None:
        """Free the servers' attention cache but keep the tokens: the next ``run`` opens a new
        session and replays them (used after a failure, when idle, and when caches are full)."""
        session, self._session = self._session, None
        if session is None:
            return
        close_route(session, self.client.quarantine.peers, self.client.options.connect_timeout)

    def close(self) -> None:
        """Close the server-side sessions (their attention caches are freed at once)."""
        self.closed = True
        self.release()

    async def aclose(self) -> None:
        import asyncio

        await asyncio.to_thread(self.close)

    def __enter__(self) -> SwarmSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
