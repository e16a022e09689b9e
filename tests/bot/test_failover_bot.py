"""A bot answer survives a crashed server: the real discord.py client against the fake Discord,
answering through the client library on a replicated loopback swarm; the servers on the
answer's route are SIGKILLed while it streams, and the final answer equals the greedy one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.engine import ClientEngine
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
from tests.client.conftest import FAILOVER_SETTINGS, heal, route_peers
from tests.conftest import SwarmFactory
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot

MAX_NEW = 160
TIMEOUT = 120.0  # generous: two shared cores, a recovery inside


@pytest.fixture(scope="module")
def replicated(swarm_factory: SwarmFactory) -> LocalSwarm:
    return swarm_factory(num_servers=2, replication=2, dht_prefix="tinybot")


@pytest.fixture(scope="module")
def failover_engine(replicated: LocalSwarm) -> Iterator[ClientEngine]:
    settings = replicated.settings()
    with SwarmClient(settings, ClientSettings(**FAILOVER_SETTINGS)) as client:
        # min_new_tokens: the answer runs long enough to be crashed into mid-stream
        yield ClientEngine(
            settings,
            stop_sequences=STOP_SEQUENCES,
            client=client,
            extra_params={"min_new_tokens": MAX_NEW},
        )


async def test_bot_answer_survives_a_crashed_server(
    fake_discord: FakeDiscord,
    tmp_path: Path,
    failover_engine: ClientEngine,
    replicated: LocalSwarm,
) -> None:
    fake = fake_discord
    client = failover_engine.client
    engine = RecordingEngine(failover_engine)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    bot = make_bot(tmp_path, engine, max_new_tokens=MAX_NEW, edit_interval_s=0.25)
    before = client.recovery_metrics.recoveries_total
    killed: list[str] = []
    try:
        async with running(bot, fake):
            asked = await fake.push_message(channel, alice, "!What is a block?")

            def streaming() -> set[str] | None:
                replies = bot_reply_to(fake, asked)
                texts = (
                    [
                        r
                        for r in fake.revisions_of(int(replies[0]["id"]))
                        if not r.content.startswith("🧠")
                    ]
                    if replies
                    else []
                )
                return (texts and route_peers(client)) or None

            used = await fake.wait_for(streaming, TIMEOUT, what="the answer to start streaming")

            def crash() -> None:
                for handle in replicated.servers:
                    if handle.identity.peer_id in used:
                        replicated.kill_server(handle)
                        killed.append(handle.name)

            await asyncio.to_thread(crash)
            reply = await final_reply(fake, asked, timeout=TIMEOUT)
    finally:
        await asyncio.to_thread(heal, replicated)
    assert killed
    assert client.recovery_metrics.recoveries_total > before
    # the bot's /metrics shows the client's recovery counters, labelled by model
    recoveries = bot.metrics.value("petals_client_recoveries_total", model=engine.label)
    assert recoveries == client.recovery_metrics.recoveries_total
    exposition = bot.metrics.exposition().decode()
    assert f'petals_client_recoveries_total{{model="{engine.label}"}}' in exposition
    assert "# TYPE petals_client_requests_waiting_for_capacity gauge" in exposition
    params = GenerationParams(max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, stop=STOP_SEQUENCES)
    expected = await client.agenerate(engine.prompts[0], params)
    assert answer_text(reply["content"]) == expected.text.strip()
