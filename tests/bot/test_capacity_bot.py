"""A bot question beyond the swarm's capacity: the real discord.py client against the fake Discord,
answering through the client library on a loopback swarm whose one server has a deliberately
small attention cache (1024 tokens, one full-window session of the tiny model). While another
session holds all of it, the bot's placeholder says it waits for a free server; once that session
ends, the answer completes and equals the greedy one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.engine import ClientEngine
from bot.formatting import capacity_line
from client import ClientSettings, GenerationParams, SwarmClient
from swarm.localswarm import LocalSwarm
from tests.bot.conftest import STOP_SEQUENCES
from tests.bot.helpers import (
    CHANNEL,
    RecordingEngine,
    answer_text,
    bot_reply_to,
    final_reply,
    make_bot,
)
from tests.conftest import SwarmFactory
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot

CACHE_TOKENS = 1024
MAX_NEW = 24
TIMEOUT = 120.0  # generous: two shared cores


@pytest.fixture(scope="module")
def small_cache_engine(swarm_factory: SwarmFactory) -> Iterator[ClientEngine]:
    # One server holding every block: one session can take its whole cache.
    swarm: LocalSwarm = swarm_factory(
        num_servers=1, dht_prefix="tinybotcap", attn_cache_tokens=CACHE_TOKENS
    )
    settings = swarm.settings()
    options = ClientSettings(session_reserve_quantum=128, capacity_wait_timeout=240)
    with SwarmClient(settings, options) as client:
        yield ClientEngine(settings, stop_sequences=STOP_SEQUENCES, client=client)


async def test_bot_placeholder_waits_for_a_free_server_then_answers(
    fake_discord: FakeDiscord, tmp_path: Path, small_cache_engine: ClientEngine
) -> None:
    fake = fake_discord
    client = small_cache_engine.client
    assert client.context_window == CACHE_TOKENS  # one full-window session fills the server
    engine = RecordingEngine(small_cache_engine)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    bot = make_bot(tmp_path, engine, max_new_tokens=MAX_NEW, edit_interval_s=0.25)
    waits_before = client.recovery_metrics.capacity_waits_total

    # Another student's session holds the server's whole attention cache.
    holder = client.open_session(client.context_window)
    await holder.astream("Hi!", GenerationParams(max_new_tokens=2)).wait()
    assert not holder.closed and holder.token_ids
    try:
        async with running(bot, fake):
            asked = await fake.push_message(channel, alice, "!What is a block?")

            def placeholder_waits() -> bool:
                replies = bot_reply_to(fake, asked)
                return bool(replies) and any(
                    capacity_line() in revision.content
                    for revision in fake.revisions_of(int(replies[0]["id"]))
                )

            await fake.wait_for(placeholder_waits, TIMEOUT, what="the placeholder to say it waits")
            assert client.recovery_metrics.waiting_for_capacity == 1
            await asyncio.to_thread(holder.close)  # its cache goes back: the question's turn
            reply = await final_reply(fake, asked, timeout=TIMEOUT)
    finally:
        await asyncio.to_thread(holder.close)

    revisions = [r.content for r in fake.revisions_of(int(reply["id"]))]
    waited_at = next(i for i, text in enumerate(revisions) if capacity_line() in text)
    # the waiting line was the placeholder: no answer text had been shown before it
    assert all(text.startswith("🧠") for text in revisions[: waited_at + 1])
    assert client.recovery_metrics.capacity_waits_total == waits_before + 1
    assert client.recovery_metrics.waiting_for_capacity == 0
    assert engine.results and engine.results[0].stopped_by != "cancelled"
    # the same answer as one generated with the cache free
    expected = await client.agenerate(engine.prompts[0], small_cache_engine.params(MAX_NEW))
    assert expected.text.strip()
    assert answer_text(reply["content"]) == expected.text.strip()
