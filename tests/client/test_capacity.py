"""Sessions sized to use, on a real loopback swarm whose servers have a deliberately small
attention cache (1024 tokens: exactly one full-window reservation of the tiny model)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from client import ClientSettings, GenerationParams, SwarmClient
from swarm.localswarm import LocalSwarm
from tests.client.conftest import poll
from tests.conftest import SwarmFactory

pytestmark = pytest.mark.swarm

CACHE_TOKENS = 1024
QUANTUM = 128
CONVERSATIONS = 4


@pytest.fixture(scope="module")
def small_cache_swarm(swarm_factory: SwarmFactory) -> LocalSwarm:
    return swarm_factory(num_servers=2, dht_prefix="tinycap", attn_cache_tokens=CACHE_TOKENS)


@pytest.fixture(scope="module")
def capacity_client(small_cache_swarm: LocalSwarm) -> Iterator[SwarmClient]:
    options = ClientSettings(session_reserve_quantum=QUANTUM, capacity_wait_timeout=240)
    with SwarmClient(small_cache_swarm.settings(), options) as client:
        yield client


def test_more_conversations_than_full_window_reservations_then_a_queue(
    capacity_client: SwarmClient,
) -> None:
    client = capacity_client
    full_window_fits = CACHE_TOKENS // client.context_window
    assert full_window_fits < CONVERSATIONS  # what the old sizing could hold at once
    params = GenerationParams(max_new_tokens=16)
    chats = [client.conversation() for _ in range(CONVERSATIONS)]
    try:
        for chat in chats:
            assert chat.send("Hi!", params).wait().completion_tokens > 0
        held = [chat._session for chat in chats]
        assert all(s is not None and not s.closed for s in held)
        assert all(s.max_length == QUANTUM for s in held if s is not None)
        # every conversation still holds its cache on the servers: a second turn continues it
        for chat in chats:
            assert chat.send("And then?", params).wait().reused_session

        # A request that needs more than the servers have left waits in line, then succeeds
        # once the conversations end and give their cache back.
        left = CACHE_TOKENS - sum(s.max_length for s in held if s is not None)
        big = GenerationParams(max_new_tokens=left + QUANTUM)
        waits_before = client.recovery_metrics.capacity_waits_total
        stream = client.stream("Tell me about the exam.", big)
        outcome: list[object] = []
        worker = threading.Thread(target=lambda: outcome.append(stream.wait()), daemon=True)
        worker.start()
        poll(
            lambda: client.recovery_metrics.waiting_for_capacity == 1,
            120,
            "the big request to wait for cache",
        )
        assert not outcome
        for chat in chats:
            chat.close()
        worker.join(timeout=240)
        assert outcome, "the waiting request did not finish after capacity came back"
        stats = outcome[0]
        assert stats.completion_tokens > 0  # type: ignore[attr-defined]
        assert stats.capacity_wait_s > 0  # type: ignore[attr-defined]
        assert client.recovery_metrics.capacity_waits_total == waits_before + 1
        assert client.recovery_metrics.waiting_for_capacity == 0
    finally:
        for chat in chats:
            chat.close()
