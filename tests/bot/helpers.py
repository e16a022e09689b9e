"""Test doubles and builders for the bot: a scripted engine (no swarm), a recording wrapper for
the real swarm engine, and a CourseBot factory with test-friendly settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import discord

from bot.app import CourseBot
from bot.engine import Engine, Generation, TextSink
from bot.jobs import CancelToken
from bot.prompt import ChatMessage
from bot.settings import BotSettings
from bot.store import AnswerRecord, Store
from tests.fakediscord.server import FakeDiscord

Answerer = Callable[[Sequence[ChatMessage]], str]
CHANNEL = "ask-the-swarm"  # the fake guild's channel the tests ask in
# Shaped like a Discord bot token (the bot refuses placeholders and malformed tokens).
GOOD = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"


class ScriptedEngine:
    """Streams a scripted answer piece by piece; honours cancellation after each piece."""

    def __init__(
        self,
        answer: str | Answerer = "A scripted answer.",
        *,
        label: str = "scripted-model",
        piece_chars: int = 4,
        delay_s: float = 0.0,
        fail: Exception | None = None,
        context_window: int = 4096,
    ) -> None:
        self.answer = answer
        self.label = label
        self.piece_chars = piece_chars
        self.delay_s = delay_s
        self.fail = fail
        self.context_window = context_window
        self.prompts: list[list[ChatMessage]] = []
        self.running = 0
        self.started = asyncio.Event()
        self.closed = False

    async def prepare(self) -> None:
        return None

    async def connect(self) -> None:
        return None

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m["content"]) // 4 + 4 for m in messages)

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_new_tokens: int,
        on_text: TextSink,
        cancel: CancelToken,
        first_token_timeout_s: float,
        timeout_s: float,
        on_waiting: Any = None,
    ) -> Generation:
        self.prompts.append(list(messages))
        if self.fail is not None:
            raise self.fail
        text = self.answer if isinstance(self.answer, str) else self.answer(messages)
        started = time.monotonic()
        sent = ""
        self.running += 1
        self.started.set()
        try:
            stopped_by = "eos"
            for start in range(0, len(text), self.piece_chars):
                if cancel.cancelled:
                    stopped_by = "cancelled"
                    break
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                piece = text[start : start + self.piece_chars]
                sent += piece
                on_text(piece)
        finally:
            self.running -= 1
        elapsed = time.monotonic() - started
        return Generation(sent, len(sent), 0.01, 100.0, elapsed, stopped_by, self.label)

    async def close(self) -> None:
        self.closed = True


class RecordingEngine:
    """Wraps a shared engine: records prompts and generations; never closes the shared one."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.label = inner.label
        self.context_window = inner.context_window
        self.prompts: list[list[ChatMessage]] = []
        self.results: list[Generation] = []

    @property
    def recovery_metrics(self) -> Any:
        return getattr(self.inner, "recovery_metrics", None)

    async def prepare(self) -> None:
        await self.inner.prepare()

    async def connect(self) -> None:
        await self.inner.connect()
        self.context_window = self.inner.context_window

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.inner.count_tokens(messages)

    async def generate(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Generation:
        self.prompts.append(list(messages))
        result = await self.inner.generate(messages, **kwargs)
        self.results.append(result)
        return result

    async def close(self) -> None:
        return None


def bot_settings(tmp_path: Path, **overrides: Any) -> BotSettings:
    values: dict[str, Any] = {
        "database": tmp_path / "bot.sqlite3",
        "http_enabled": False,
        "edit_interval_s": 0.2,
        "add_rating_reactions": False,
        # The fake Discord has no rate-limit buckets unless a test adds them; the tests that
        # do set the bot's channel budget themselves.
        "channel_edit_calls": 50,
        "channel_edit_window_s": 1.0,
    }
    values.update(overrides)
    return BotSettings(**values)


def make_bot(
    tmp_path: Path,
    engine: Engine,
    *,
    ab_engine: Engine | None = None,
    intents: discord.Intents | None = None,
    **overrides: Any,
) -> CourseBot:
    settings = bot_settings(tmp_path, **overrides)
    return CourseBot(
        settings,
        engine,
        Store(settings.database),
        ab_engine=ab_engine,
        intents=intents,
        guild_ready_timeout=0.1,
    )


def answers_in(fake: FakeDiscord, channel_id: int) -> list[dict[str, Any]]:
    """The bot's messages in a channel or thread, oldest first."""
    return fake.messages_in(channel_id, author_id=fake.bot_user_id)


def final(content: str) -> bool:
    """Whether an answer message shows its final footer (not the placeholder or 'writing')."""
    lines = content.rstrip().split("\n")
    return lines[-1].startswith("-# ") and "writing…" not in lines[-1] and "⏱" in lines[-1]


def answer_text(content: str) -> str:
    """The answer without its footer line (and without an A/B header)."""
    lines = content.rstrip().split("\n")
    if lines and lines[-1].startswith("-# "):
        lines.pop()
    if lines and lines[0].startswith("**Answer "):
        lines.pop(0)
    return "\n".join(lines).strip()


def health_state(*, uncovered: Sequence[int] = (), now: float = 1_700_000_000.0) -> dict[str, Any]:
    """A /api/v1/state body made by the health service's own pure functions (a contract test:
    /status reads what monitoring/ really serves). Two trusted servers split 8 blocks; blocks in
    ``uncovered`` lose their server."""
    from monitoring.metrics import ProbeStatus
    from monitoring.refresher import RefreshStatus
    from monitoring.snapshot import ServerRecord, SwarmSnapshot
    from monitoring.state import refresh_state, swarm_state

    def server(peer: str, start: int, end: int) -> ServerRecord:
        return ServerRecord(
            peer_id=peer, public_name=peer, state="online", start_block=start, end_block=end,
            throughput=10.0, inference_rps=None, forward_rps=None, network_rps=None,
            cache_tokens_left=1000, version="2.2.0", torch_dtype="float32", quant_type="none",
            using_relay=False, trusted=True,
        )  # fmt: skip

    servers = [server("12D3KooWA", 0, 4), server("12D3KooWB", 4, 8)]
    if uncovered:
        servers = [s for s in servers if not any(s.serves(b) for b in uncovered)]
    snapshot = SwarmSnapshot(
        model="tiny-llama", dht_prefix="tiny", num_blocks=8, replication_target=1,
        trusted_peer_ids=("12D3KooWA", "12D3KooWB"), servers=tuple(servers),
        taken_at=now, refresh_seconds=0.2,
    )  # fmt: skip
    status = RefreshStatus(interval_s=15.0, snapshot=snapshot, last_success_at=now, last_ok=True)
    probe = ProbeStatus(runs_total=3, last_success_at=now, last_ttft_s=0.31, last_tokens_per_s=42.5)
    state = swarm_state(snapshot, refresh_state(status, 3.0, now), probe)
    return state.model_dump(mode="json")


def bot_reply_to(fake: FakeDiscord, message_id: int) -> list[dict[str, Any]]:
    return [m for m in fake.replies_to(message_id) if m["author"]["id"] == str(fake.bot_user_id)]


async def final_reply(fake: FakeDiscord, asked: int, timeout: float = 10.0) -> dict[str, Any]:
    """The bot's reply to ``asked`` once it is no longer a placeholder or being written."""

    def done() -> dict[str, Any] | None:
        replies = bot_reply_to(fake, asked)
        if not replies:
            return None
        current = fake.message(int(replies[0]["id"]))
        content = current["content"]
        return None if content.startswith("🧠") or "writing…" in content else current

    return await fake.wait_for(done, timeout, what=f"the final answer to {asked}")


def alert(status: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "critical", "model": "tiny", "job": "petals"}
        | extra.pop("labels", {}),
        "annotations": {"summary": f"{name} summary", "description": "line one\n  line two"},
        "startsAt": "2024-04-10T10:00:00Z",
        "endsAt": "2024-04-10T10:07:30Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": "abc",
        **extra,
    }


def record(answer_id: int, **values: Any) -> AnswerRecord:
    defaults: dict[str, Any] = {
        "id": answer_id,
        "message_ids": [answer_id],
        "guild_id": 1,
        "channel_id": 2,
        "thread_id": None,
        "user_id": 7,
        "question_message_id": answer_id - 1,
        "parent_id": None,
        "question": f"q{answer_id}",
        "answer": f"a{answer_id}",
        "model": "big",
        "sources": [],
        "ttft_s": 1.0,
        "tokens": 10,
        "tokens_per_s": 5.0,
        "elapsed_s": 3.0,
        "stopped_by": "eos",
        "created_at": float(answer_id),
    }
    return AnswerRecord(**(defaults | values))
