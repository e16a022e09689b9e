"""One petals inference session on the trusted servers, continued across generate calls.

The servers keep the session's attention cache (``max_length`` tokens, reserved when the first
step arrives), so a later call sends only its new tokens. Petals' ``generate(session=...)``
prepends the tokens the session already holds and re-sends just the last one; we only track the
token ids so callers can tell whether a new prompt extends what the session holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from client.errors import ClientStateError, GenerationFailed, InvalidRequest
from client.params import GenerationParams
from client.streams import (
    AsyncGenerationStream,
    CancelToken,
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
        self._lock = threading.Lock()
        self.closed = False
        self.last_used = time.monotonic()

    @property
    def token_ids(self) -> tuple[int, ...]:
        """Every token the session holds (prompts and answers so far)."""
        return tuple(self._token_ids)

    @property
    def room(self) -> int:
        return self.max_length - len(self._token_ids)

    def can_continue(self, input_ids: Sequence[int], max_new_tokens: int) -> bool:
        """Whether ``input_ids`` extends what the session holds and fits, and the servers still
        have the session (sessions idle too long are dropped server-side)."""
        held = self._token_ids
        idle = time.monotonic() - self.last_used
        return (
            not self.closed
            and self._session is not None
            and 0 < len(held) < len(input_ids)
            and list(input_ids[: len(held)]) == held
            and len(input_ids) + max_new_tokens <= self.max_length
            and idle < self.client.options.session_idle_timeout
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
        """Feed ``new_ids`` and generate; blocks for the whole answer."""
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
        import torch

        from client.generation import stream_generate

        client = self.client
        reused = bool(self._token_ids)

        def stop_now() -> bool:
            return should_cancel() or client.closing

        with client.stream_slot():
            if stop_now():
                self.close()
                return StreamStats("", len(new_ids), 0, None, 0.0, "cancelled", trimmed_messages)
            if self._session is None:
                self._session = client.new_petals_session(self.max_length)
            inputs = torch.tensor([list(new_ids)], dtype=torch.long) if new_ids else None
            try:
                with torch.no_grad():
                    result = stream_generate(
                        client.model,
                        client.tokenizer,
                        inputs,
                        max_new_tokens=params.max_new_tokens,
                        on_text=emit,
                        stop_sequences=tuple(stop_sequences) + params.stop,
                        should_cancel=stop_now,
                        session=self._session,
                        started_at=started_at,
                        eos_token_id=client.eos_token_ids,
                        pad_token_id=client.pad_token_id,
                        **params.generate_kwargs(),
                    )
            except BaseException as exc:
                self.close()
                failure = swarm_failure(exc)
                if failure is not None:
                    raise failure from exc
                raise
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
        )

    def close(self) -> None:
        """Close the server-side sessions (their attention caches are freed at once)."""
        self.closed = True
        session, self._session = self._session, None
        if session is None:
            return
        spans = list(getattr(session, "_server_sessions", ()))
        try:
            session.close()
        finally:
            # Petals logs and swallows a failed close and leaves the span "open"; its __del__
            # then retries on hivemind's event loop, which at interpreter exit is gone: the
            # process hangs. The usual failure is a BrokenPipeError while reading the end of a
            # stream the server has already closed (seen on loopback after short answers; the
            # server logs the session's close), so nothing is left to do but forget the span.
            for span in spans:
                if getattr(span, "_outputs_stream", None) is not None:
                    logger.debug("inference session on %s ended uncleanly", span.span.peer_id)
                    span._outputs_stream = span._inputs_queue = None
                    span.closed = True

    async def aclose(self) -> None:
        import asyncio

        await asyncio.to_thread(self.close)

    def __enter__(self) -> SwarmSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
