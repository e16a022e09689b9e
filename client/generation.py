"""Streaming generation on a (distributed or local) causal LM: text deltas, stop sequences, timings.

Works the same on petals' distributed model and on a local ``transformers`` model, which is how the
tests compare the swarm with the local reference token for token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

TextCallback = Callable[[str], None]


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    time_to_first_token_s: float | None
    elapsed_s: float
    stopped_by: str  # "eos" | "stop_sequence" | "length" | "cancelled"

    @property
    def tokens_per_second(self) -> float | None:
        if self.time_to_first_token_s is None or len(self.token_ids) < 2:
            return None
        decode_time = self.elapsed_s - self.time_to_first_token_s
        return (len(self.token_ids) - 1) / decode_time if decode_time > 0 else None


@dataclass
class StreamState:
    """What a generation has produced so far; survives a recovery (a new attempt continues it,
    so no text is emitted twice and the timings keep their origin)."""

    tokenizer: Any
    on_text: TextCallback | None
    stop_sequences: Sequence[str]
    should_cancel: Callable[[], bool] | None
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    token_ids: list[int] = field(default_factory=list)
    emitted: str = ""
    stop_reason: str | None = None
    seen_prompt: bool = False
    last_token_at: float | None = None
    resumed_from: float | None = None  # set by a recovery: the next token ends a stall
    stalls: list[float] = field(default_factory=list)  # seconds without tokens at recoveries
    on_token: Callable[[], None] | None = None  # after every generated token

    def visible_text(self) -> str:
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        for stop in self.stop_sequences:
            index = text.find(stop)
            if index != -1:
                self.stop_reason = "stop_sequence"
                return text[:index]
        return text

    def put(self, value: Any) -> None:
        ids = value.reshape(-1).tolist()
        if not self.seen_prompt:  # transformers hands the prompt to the streamer first
            self.seen_prompt = True
            return
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        if self.resumed_from is not None:
            self.stalls.append(now - self.resumed_from)
            self.resumed_from = None
        self.last_token_at = now
        if self.on_token is not None:
            self.on_token()
        self.token_ids.extend(ids)
        if self.stop_reason is not None:
            return
        text = self.visible_text()
        # Hold back an incomplete UTF-8 sequence (decoded as U+FFFD) and a possible stop prefix.
        safe = text.rstrip("\ufffd")
        hold = max((len(s) - 1 for s in self.stop_sequences), default=0)
        if self.stop_reason is None and hold:
            safe = safe[: max(len(self.emitted), len(safe) - hold)]
        if len(safe) > len(self.emitted) and safe.startswith(self.emitted):
            delta, self.emitted = safe[len(self.emitted) :], safe
            if self.on_text:
                self.on_text(delta)
        if self.should_cancel is not None and self.should_cancel():
            self.stop_reason = "cancelled"

    def end(self) -> None:
        text = self.visible_text().rstrip("\ufffd")
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            delta, self.emitted = text[len(self.emitted) :], text
            if self.on_text:
                self.on_text(delta)


def stream_generate(
    model: Any,
    tokenizer: Any,
    input_ids: Any,
    *,
    max_new_tokens: int,
    on_text: TextCallback | None = None,
    stop_sequences: Sequence[str] = (),
    should_cancel: Callable[[], bool] | None = None,
    session: Any = None,
    started_at: float | None = None,
    state: StreamState | None = None,
    **generate_kwargs: Any,
) -> GenerationResult:
    """Generate up to ``max_new_tokens``, calling ``on_text`` with each new piece of text.

    ``started_at`` (a ``time.perf_counter()`` value) moves the origin of the timings back to when
    the caller accepted the request, so queueing and session setup count towards the first token.
    ``eos_token_id`` may be a list (e.g. Llama-3's end of turn besides end of text).
    ``state`` continues an interrupted generation: ``input_ids`` then end with the tokens it
    already produced, and ``max_new_tokens`` counts only the tokens still to come.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    if state is None:
        state = StreamState(tokenizer, on_text, tuple(stop_sequences), should_cancel)
        if started_at is not None:
            state.started = started_at
    state.seen_prompt = False  # each attempt hands its prompt to the streamer first

    current = state

    class _Streamer(BaseStreamer):
        def put(self, value: Any) -> None:
            current.put(value)

        def end(self) -> None:
            current.end()

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
            return current.stop_reason is not None

    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "streamer": _Streamer(),
        "stopping_criteria": StoppingCriteriaList([_Stop()]),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **generate_kwargs,
    }
    kwargs.setdefault("do_sample", False)
    if session is not None:
        kwargs["session"] = session
    model.generate(input_ids, **kwargs)
    elapsed = time.perf_counter() - state.started
    ttft = None if state.first_token_at is None else state.first_token_at - state.started
    reason = state.stop_reason
    if reason is None:
        eos = kwargs["eos_token_id"]
        eos_ids = set(eos) if isinstance(eos, list | tuple) else {eos}
        reason = "eos" if state.token_ids and state.token_ids[-1] in eos_ids else "length"
    return GenerationResult(state.emitted, state.token_ids, ttft, elapsed, reason)
