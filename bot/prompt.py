"""Prompt assembly (pure): instructions, course passages with their file names, the earlier turns
of the conversation and the question, trimmed to fit the model's context window.

Trimming order when the prompt is too long: the oldest turns go first, then the lowest-ranked
passages, and only then is the question itself shortened. Token counts come from a callable (the
engine's tokenizer with its chat template), so this module stays free of models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bot.knowledge import Passage

ChatMessage = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}
TokenCounter = Callable[[Sequence[ChatMessage]], int]
NOTES_HEADER = "Course notes (name the file in brackets when you use one):"


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of the conversation."""

    question: str
    answer: str


@dataclass(frozen=True)
class PromptPlan:
    messages: list[ChatMessage]
    prompt_tokens: int
    sources: list[str]  # files of the passages that made it into the prompt, in rank order
    turns_used: int
    turns_dropped: int
    passages_dropped: int
    question_truncated: bool


def format_passage(passage: Passage) -> str:
    where = f"{passage.source} › {passage.heading}" if passage.heading else passage.source
    return f"[{where}]\n{passage.text.strip()}"


def select_passages(passages: Sequence[Passage], max_chars: int) -> list[Passage]:
    """The best passages (given best first) whose text fits in ``max_chars`` together."""
    chosen: list[Passage] = []
    used = 0
    for passage in passages:
        size = len(format_passage(passage)) + 2
        if used + size > max_chars:
            continue
        chosen.append(passage)
        used += size
    return chosen


def build_messages(
    system_prompt: str, passages: Sequence[Passage], history: Sequence[Turn], question: str
) -> list[ChatMessage]:
    system = system_prompt.strip()
    if passages:
        notes = "\n\n".join(format_passage(p) for p in passages)
        system = (
            f"{system}\n\n{NOTES_HEADER}\n\n{notes}" if system else f"{NOTES_HEADER}\n\n{notes}"
        )
    messages: list[ChatMessage] = [{"role": "system", "content": system}] if system else []
    for turn in history:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer})
    messages.append({"role": "user", "content": question})
    return messages


class PromptTooLong(ValueError):
    """Even the instructions and a one-line question exceed the budget (a configuration error)."""


def plan_prompt(
    *,
    system_prompt: str,
    passages: Sequence[Passage],
    history: Sequence[Turn],
    question: str,
    count_tokens: TokenCounter,
    token_budget: int,
) -> PromptPlan:
    """The longest prompt within ``token_budget`` tokens, trimmed as the module describes."""
    turns = list(history)
    kept = list(passages)
    text = question

    def size() -> int:
        return count_tokens(build_messages(system_prompt, kept, turns, text))

    tokens = size()
    while tokens > token_budget and turns:
        turns.pop(0)
        tokens = size()
    while tokens > token_budget and kept:
        kept.pop()
        tokens = size()
    truncated = False
    if tokens > token_budget:
        # Shorten the question by bisection on its length (token counts are not additive).
        low, high = 0, len(question)
        while low < high:
            middle = (low + high + 1) // 2
            text = question[:middle].rstrip() + " …"
            if size() <= token_budget:
                low = middle
            else:
                high = middle - 1
        if low == 0:
            raise PromptTooLong(
                f"the instructions alone need more than {token_budget} tokens; shorten "
                "system_prompt or lower max_new_tokens"
            )
        text = question[:low].rstrip() + " …"
        truncated = True
        tokens = size()
    return PromptPlan(
        messages=build_messages(system_prompt, kept, turns, text),
        prompt_tokens=tokens,
        sources=list(dict.fromkeys(p.source for p in kept)),
        turns_used=len(turns),
        turns_dropped=len(history) - len(turns),
        passages_dropped=len(passages) - len(kept),
        question_truncated=truncated,
    )
