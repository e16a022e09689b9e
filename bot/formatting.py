"""Pure text for Discord: splitting past the 2,000-character limit, the answer footer, placeholder
and queue lines, and the short replies to questions the bot will not send to the swarm.

Nothing here touches Discord; the streaming code renders with these functions on every edit, so
they must be deterministic and cheap.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DISCORD_LIMIT = 2000
PLACEHOLDER = "🧠"
# Discord's "subtext" markdown: a small grey line, used for the footer.
SUBTEXT = "-# "
WRITING_FOOTER = SUBTEXT + "🧠 writing… (/stop to stop it)"

_FENCE = re.compile(r"^```([^\s`]*)", re.MULTILINE)


def _open_fence(chunk: str) -> str | None:
    """The language tag of a code fence left open at the end of ``chunk`` ("" for none)."""
    fences = _FENCE.findall(chunk)
    return fences[-1] if len(fences) % 2 == 1 else None


def _cut(text: str, limit: int) -> int:
    """Where to end the first chunk of ``text`` (len > limit): the last paragraph break, line
    break, sentence end or space in the second half of the window, else a hard cut."""
    window = text[:limit]
    floor = limit // 2
    for separator in ("\n\n", "\n", ". ", "? ", "! ", " "):
        index = window.rfind(separator)
        if index >= floor:
            return index + len(separator)
    return limit


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters at natural boundaries.

    A code block cut in two is closed at the end of one chunk and reopened (same language) at
    the start of the next, so both render as code. The cut depends only on the first ``limit``
    characters, so a chunk stays the same while a streamed answer grows behind it.
    """
    if limit < 20:
        raise ValueError(f"limit {limit}: too small to split messages sensibly (minimum 20)")
    chunks: list[str] = []
    reopen = ""
    rest = text
    while rest:
        rest = reopen + rest
        if len(rest) <= limit:
            chunks.append(rest)
            break
        budget = limit - 4  # room for a closing "\n```"
        end = _cut(rest, budget)
        chunk = rest[:end]
        language = _open_fence(chunk)
        if language is not None:
            chunk = chunk.rstrip("\n") + "\n```"
            reopen = f"```{language}\n"
        else:
            reopen = ""
        chunks.append(chunk.rstrip() or chunk)
        rest = rest[end:].lstrip("\n") if reopen == "" else rest[end:]
    return chunks or [""]


def render_answer(text: str, footer: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Message contents for an answer: the text split, the footer on the last message (or on a
    message of its own when it does not fit). Never an empty message."""
    body = text.strip()
    if not body:
        return [footer] if footer else [PLACEHOLDER]
    chunks = split_message(body, limit)
    if footer:
        last = chunks[-1] + "\n" + footer
        if len(last) <= limit:
            chunks[-1] = last
        else:
            chunks.append(footer)
    return chunks


@dataclass(frozen=True)
class AnswerStats:
    """What the footer reports about one finished generation."""

    ttft_s: float | None
    tokens_per_s: float | None
    tokens: int
    stopped_by: str  # eos | stop_sequence | length | cancelled
    model: str | None = None  # None in blind A/B answers


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def footer(
    stats: AnswerStats, sources: Sequence[str] = (), *, hint: bool = True, stopped_by_who: str = ""
) -> str:
    """The grey line under an answer: speed, sources and how to continue or rate."""
    parts: list[str] = []
    if stats.ttft_s is not None:
        parts.append(f"⏱ {_seconds(stats.ttft_s)} to first token")
    if stats.tokens_per_s is not None:
        parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    parts.append(f"{stats.tokens} tokens")
    if stats.model:
        parts.append(stats.model)
    if sources:
        parts.append("📚 " + ", ".join(dict.fromkeys(sources)))
    if stats.stopped_by == "length":
        parts.append("✂️ length limit reached")
    elif stats.stopped_by == "cancelled":
        parts.append("⏹ stopped" + (f" by {stopped_by_who}" if stopped_by_who else ""))
    if hint:
        parts.append("reply to continue · 👍/👎 to rate")
    return SUBTEXT + " · ".join(parts)


def strip_footer(content: str) -> str:
    """An answer message's text without the footer line (used when rebuilding a conversation
    from Discord messages the database does not know)."""
    lines = content.rstrip().split("\n")
    if lines and lines[-1].startswith(SUBTEXT):
        lines.pop()
    return "\n".join(lines).strip()


def queue_line(position: int) -> str:
    """The placeholder while a question waits for a generation slot (position 1 = next)."""
    if position <= 1:
        return f"{PLACEHOLDER} next in line: waiting for a free slot on the swarm…"
    return f"{PLACEHOLDER} waiting in line: {position - 1} question(s) ahead of yours…"


def capacity_line() -> str:
    """The placeholder while the question waits because the swarm's servers have no cache free."""
    return f"{PLACEHOLDER} waiting for a free server: the swarm's memory is full right now…"


def check_question(text: str, max_chars: int, prefix: str) -> str | None:
    """Why a question cannot be asked (the reply to send), or None when it can."""
    if not text.strip():
        return f"Ask me a question after `{prefix}`, for example `{prefix}When is the exam?`"
    if len(text) > max_chars:
        return (
            f"Your question is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Please shorten it and ask again."
        )
    return None


def rate_limited_line(retry_after_s: float, count: int, window_s: float) -> str:
    return (
        f"You can ask {count} question(s) per {window_s:g} s. "
        f"Please wait {max(1, round(retry_after_s))} s before the next one."
    )


def unknown_command_line(word: str, prefix: str) -> str:
    word = word if len(word) <= 32 else word[:31] + "…"
    return (
        f"I don't know the command `{prefix}{word}`. Ask a question with "
        f"`{prefix}ask <question>` or `{prefix}<your question>?`, or see `{prefix}help`."
    )


def help_text(prefix: str, channel_mention: str | None) -> str:
    where = f" in {channel_mention}" if channel_mention else ""
    return "\n".join(
        [
            f"**Ask the course assistant{where}**",
            f"• `{prefix}<question>` or `{prefix}ask <question>` or `/ask` — answered on the "
            "course's own GPU swarm, streamed as it is written.",
            "• Reply to an answer to ask a follow-up; `/ask thread:True` opens a thread where "
            "every message continues the conversation.",
            "• 👍/👎 on an answer rates it. `/stop` stops your answer.",
            "• `/status` shows the swarm's health. Moderators: `/breakall`, `/stats`, "
            "`/export`, `/reload`, `/setup`.",
        ]
    )
