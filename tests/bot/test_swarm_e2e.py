"""End to end: the real discord.py client against the fake Discord, answering through the real
client library on the loopback Petals swarm (the tiny Llama)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.engine import ClientEngine
from client import GenerationParams
from swarm.localswarm import LocalSwarm
from tests.bot.conftest import STOP_SEQUENCES
from tests.bot.helpers import (
    CHANNEL,
    RecordingEngine,
    answer_text,
    answers_in,
    bot_reply_to,
    final,
    final_reply,
    make_bot,
)
from tests.conftest import SwarmFactory
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot

MAX_NEW = 160
LONG = 600  # tokens an answer runs at least in the control tests (several seconds)
TIMEOUT = 90.0  # generous: two shared cores, other suites running


@pytest.fixture
def long_engine(swarm_engine: ClientEngine, local_swarm: LocalSwarm) -> Iterator[RecordingEngine]:
    """Answers of at least LONG tokens on the shared client, so they are still running when a
    test needs them to be."""
    engine = ClientEngine(
        local_swarm.settings(),
        stop_sequences=STOP_SEQUENCES,
        extra_params={"min_new_tokens": LONG},
        client=swarm_engine.client,
    )
    yield RecordingEngine(engine)


def text_edits(fake: FakeDiscord, message_id: int) -> list[Any]:
    """Revisions that show answer text (not the placeholder or a queue line)."""
    return [r for r in fake.revisions_of(message_id) if not r.content.startswith("🧠")]


async def test_streamed_answer_equals_the_clients_greedy_output(
    fake_discord: FakeDiscord, tmp_path: Path, swarm_engine: ClientEngine
) -> None:
    fake = fake_discord
    engine = RecordingEngine(swarm_engine)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    bot = make_bot(tmp_path, engine, max_new_tokens=MAX_NEW, edit_interval_s=0.25)
    async with running(bot, fake):
        asked = await fake.push_message(channel, alice, "!What is a block?")
        reply = await final_reply(fake, asked, timeout=TIMEOUT)
    revisions = fake.revisions_of(int(reply["id"]))
    assert revisions[0].content == "🧠"
    assert len(revisions) >= 4, [r.content for r in revisions]  # placeholder, edits, final
    assert final(revisions[-1].content) and "tokens/s" in revisions[-1].content
    # The same prompt through the client library directly, greedy, same limits.
    prompt = engine.prompts[0]
    params = GenerationParams(max_new_tokens=MAX_NEW, stop=STOP_SEQUENCES)
    expected = await swarm_engine.client.agenerate(prompt, params)
    assert expected.text.strip(), "the tiny model should say something"
    assert answer_text(revisions[-1].content) == expected.text.strip()
    assert engine.results[0].tokens == expected.completion_tokens
    streamed = [answer_text(r.content) for r in revisions[1:-1]]
    assert all(expected.text.strip().startswith(s) for s in streamed)  # edits only grow


async def test_reply_and_slash_thread_continue_the_conversation(
    fake_discord: FakeDiscord, tmp_path: Path, swarm_engine: ClientEngine
) -> None:
    fake = fake_discord
    engine = RecordingEngine(swarm_engine)
    channel, alice, bob = fake.channel_ids[CHANNEL], fake.user_ids["alice"], fake.user_ids["bob"]
    async with running(make_bot(tmp_path, engine, max_new_tokens=80), fake) as bot:
        first = await fake.push_message(channel, alice, "!Who runs the servers?")
        answer = await final_reply(fake, first, timeout=TIMEOUT)
        follow = await fake.push_message(channel, alice, "Why?", reference=int(answer["id"]))
        await final_reply(fake, follow, timeout=TIMEOUT)

        options = {"question": "What is a block?", "thread": True}
        await fake.push_interaction("ask", options, bob, channel)
        thread = int((await fake.wait_for(lambda: fake.threads_in(channel), TIMEOUT))[0]["id"])
        await fake.wait_for(
            lambda: any(final(m["content"]) for m in answers_in(fake, thread)), TIMEOUT
        )
        await fake.push_message(thread, bob, "Tell me more")  # no reply, no prefix
        await fake.wait_for(
            lambda: sum(final(m["content"]) for m in answers_in(fake, thread)) == 2, TIMEOUT
        )
        await fake.wait_for(lambda: len(bot.jobs) == 0)
    first_answer = engine.results[0].text.strip()
    assert [m["content"] for m in engine.prompts[1][1:]] == [
        "Who runs the servers?",
        first_answer,
        "alice asks: Why?",
    ]
    thread_answer = engine.results[2].text.strip()
    assert [m["content"] for m in engine.prompts[3][1:]] == [
        "What is a block?",
        thread_answer,
        "bob asks: Tell me more",
    ]


async def test_breakall_stops_two_running_generations_within_a_second(
    fake_discord: FakeDiscord, tmp_path: Path, long_engine: RecordingEngine
) -> None:
    fake = fake_discord
    channel = fake.channel_ids[CHANNEL]
    alice, bob, maya = fake.user_ids["alice"], fake.user_ids["bob"], fake.user_ids["maya"]
    settings: dict[str, Any] = {"max_new_tokens": LONG + 50, "edit_interval_s": 0.3}
    async with running(make_bot(tmp_path, long_engine, **settings), fake) as bot:
        a = await fake.push_message(channel, alice, "!Tell me about blocks")
        b = await fake.push_message(channel, bob, "!Tell me about servers")
        replies = [
            int((await fake.wait_for(lambda q=q: bot_reply_to(fake, q), TIMEOUT))[0]["id"])
            for q in (a, b)
        ]
        for reply in replies:  # both are streaming text
            await fake.wait_for(lambda r=reply: len(text_edits(fake, r)) >= 2, TIMEOUT)
        pushed = time.monotonic()
        await fake.push_interaction("breakall", None, maya, channel)
        await fake.wait_for(lambda: len(long_engine.results) == 2, 5.0, what="both stopped")
        stopped = time.monotonic() - pushed
        await fake.wait_for(lambda: len(bot.jobs) == 0, 5.0)
    print(f"/breakall: both generations ended {stopped:.3f} s after the interaction")
    assert stopped < 1.0, f"generations ended {stopped:.2f} s after /breakall"
    assert [r.stopped_by for r in long_engine.results] == ["cancelled", "cancelled"]
    assert all(r.tokens < LONG for r in long_engine.results)
    for reply in replies:
        last = fake.revisions_of(reply)[-1]
        assert "⏹ stopped by maya" in last.content
        assert last.at - pushed < 1.5  # the final edit followed at once


async def test_two_concurrent_questions_both_stream(
    fake_discord: FakeDiscord, tmp_path: Path, long_engine: RecordingEngine
) -> None:
    """The second question's route finding and prefill must not freeze the first answer."""
    fake = fake_discord
    channel, alice, bob = fake.channel_ids[CHANNEL], fake.user_ids["alice"], fake.user_ids["bob"]
    settings: dict[str, Any] = {"max_new_tokens": LONG, "edit_interval_s": 0.3}
    async with running(make_bot(tmp_path, long_engine, **settings), fake) as bot:
        a = await fake.push_message(channel, alice, "!First question about GPUs")
        reply_a = int((await fake.wait_for(lambda: bot_reply_to(fake, a), TIMEOUT))[0]["id"])
        await fake.wait_for(lambda: len(text_edits(fake, reply_a)) >= 2, TIMEOUT)
        second_asked = time.monotonic()
        b = await fake.push_message(channel, bob, "!Second question about blocks")
        reply_b = int((await fake.wait_for(lambda: bot_reply_to(fake, b), TIMEOUT))[0]["id"])
        await fake.wait_for(lambda: len(text_edits(fake, reply_b)) >= 1, TIMEOUT)
        b_first_text = text_edits(fake, reply_b)[0].at
        for q in (a, b):
            await final_reply(fake, q, timeout=TIMEOUT * 2)
        await fake.wait_for(lambda: len(bot.jobs) == 0)
    edits_a = text_edits(fake, reply_a)
    edits_b = text_edits(fake, reply_b)
    # While B was starting, A kept growing ...
    assert any(second_asked <= r.at <= b_first_text + 0.5 for r in edits_a)
    # ... and afterwards both grew side by side: A was edited between B's edits.
    overlap = [r for r in edits_a if b_first_text < r.at < edits_b[-1].at]
    assert len(overlap) >= 2, [(round(r.at - second_asked, 2)) for r in edits_a]
    assert len(edits_b) >= 3
    assert [r.stopped_by for r in long_engine.results] == ["length", "length"]


async def test_swarm_down_gives_a_short_notice_never_a_stuck_placeholder(
    fake_discord: FakeDiscord, tmp_path: Path, swarm_factory: SwarmFactory
) -> None:
    fake = fake_discord
    own = await asyncio.to_thread(swarm_factory, 1, dht_prefix="botdown")
    engine = ClientEngine(own.settings(), stop_sequences=STOP_SEQUENCES, reconnect_after_s=0.0)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    settings: dict[str, Any] = {"max_new_tokens": 40, "first_token_timeout_s": 60.0}
    async with running(make_bot(tmp_path, engine, **settings), fake) as bot:
        asked = await fake.push_message(channel, alice, "!Hello?")
        answer = await final_reply(fake, asked, timeout=TIMEOUT)
        assert final(answer["content"])
        await asyncio.to_thread(own.stop)
        again = await fake.push_message(channel, alice, "!Are you still there?")
        down = await final_reply(fake, again, timeout=TIMEOUT)
        later = await fake.push_message(channel, alice, "!And now?")
        still_down = await final_reply(fake, later, timeout=TIMEOUT)
        await fake.wait_for(lambda: len(bot.jobs) == 0)
        errors = bot.metrics.value("petals_bot_errors_total", reason="swarm_unavailable")
    for reply in (down, still_down):
        assert reply["content"].startswith("⚠️ ") and "swarm" in reply["content"]
        assert len(reply["content"]) < 400 and "🧠" not in reply["content"]
    assert errors == 2
    assert bot.is_closed()  # closed cleanly, no crash
