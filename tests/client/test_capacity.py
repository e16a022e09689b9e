"""Sessions sized to use, on a real loopback swarm whose servers have a deliberately small
attention cache (1024 tokens: exactly one full-window reservation of the tiny model)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client import ClientSettings, Conversation, GenerationParams, SwarmClient
from client.gateway.settings import GatewaySettings
from swarm.localswarm import LocalSwarm
from tests.client.conftest import GatewayServer, client_peer_suffix, inference_sessions, poll
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
        events: list[bool] = []  # the stream's visible reason: waiting for capacity, then not
        stream.on_capacity_wait = events.append
        outcome: list[object] = []
        worker = threading.Thread(target=lambda: outcome.append(stream.wait()), daemon=True)
        worker.start()
        poll(
            lambda: client.recovery_metrics.waiting_for_capacity == 1,
            120,
            "the big request to wait for cache",
        )
        poll(lambda: events == [True], 60, "the stream to say it waits for server capacity")
        assert stream.waiting_for_capacity
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
        assert events == [True, False] and not stream.waiting_for_capacity
    finally:
        for chat in chats:
            chat.close()


# -- released when idle, grown when outgrown: both replay, and neither changes the answer ---------
GREEDY = GenerationParams(max_new_tokens=16)
LONG_TURN = GenerationParams(max_new_tokens=96, min_new_tokens=96)
IDLE_TIMEOUT = 5.0  # seconds; long enough that back-to-back turns continue the session


@pytest.fixture(scope="module")
def idle_client(small_cache_swarm: LocalSwarm) -> Iterator[SwarmClient]:
    """Releases idle sessions after IDLE_TIMEOUT and reserves 512 tokens per session (a
    conversation of two short turns never outgrows it)."""
    options = ClientSettings(
        session_reserve_quantum=512, session_idle_timeout=IDLE_TIMEOUT, capacity_wait_timeout=240
    )
    with SwarmClient(small_cache_swarm.settings(), options) as client:
        yield client


def two_turns(client: SwarmClient, second: GenerationParams, pause: object = None) -> list[object]:
    """Stats of "Hi!" then "And then?" in one conversation; ``pause(chat)`` runs between."""
    with client.conversation() as chat:
        first = chat.send("Hi!", GREEDY).wait()
        if pause is not None:
            pause(chat)  # type: ignore[operator]
        return [first, chat.send("And then?", second).wait()]


def test_an_idle_conversation_gives_its_cache_back_and_answers_the_same(
    capacity_client: SwarmClient, idle_client: SwarmClient, small_cache_swarm: LocalSwarm
) -> None:
    kept = two_turns(capacity_client, GREEDY)  # the reference: never released
    assert kept[1].reused_session  # type: ignore[attr-defined]
    suffix = client_peer_suffix(idle_client)

    def until_released(chat: Conversation) -> None:
        session = chat._session
        assert session is not None and session._session is not None
        # the idle reaper releases the petals session; the servers close it (cache given back)
        poll(lambda: session._session is None, 60, "the idle session to be released")
        poll(
            lambda: all(
                o == c > 0 for o, c in inference_sessions(small_cache_swarm, suffix).values()
            ),
            60,
            "every server to close the idle session",
        )
        assert session.token_ids and not session.closed  # the history stays, for the replay

    replayed = two_turns(idle_client, GREEDY, until_released)
    assert not replayed[1].reused_session  # type: ignore[attr-defined]
    assert [s.text for s in replayed] == [s.text for s in kept]  # type: ignore[attr-defined]


def test_an_outgrown_conversation_reopens_a_larger_session_and_answers_the_same(
    capacity_client: SwarmClient, idle_client: SwarmClient
) -> None:
    reference = two_turns(idle_client, LONG_TURN)  # 512 reserved: the second turn continues
    assert reference[1].reused_session  # type: ignore[attr-defined]
    sizes: list[int] = []

    def remember_size(chat: Conversation) -> None:
        assert chat._session is not None
        sizes.append(chat._session.max_length)

    grown: list[int] = []
    original = capacity_client.open_session

    def spy(max_length: int) -> object:
        grown.append(max_length)
        return original(max_length)

    capacity_client.open_session = spy  # type: ignore[method-assign]
    try:
        outgrown = two_turns(capacity_client, LONG_TURN, remember_size)
    finally:
        del capacity_client.open_session
    assert sizes == [QUANTUM]
    assert len(grown) == 2 and grown[1] > QUANTUM and grown[1] % QUANTUM == 0
    assert not outgrown[1].reused_session  # type: ignore[attr-defined]
    assert [s.text for s in outgrown] == [s.text for s in reference]  # type: ignore[attr-defined]


def test_gateway_sse_says_it_waits_for_server_capacity(
    capacity_client: SwarmClient, tokens_file: tuple[Path, str]
) -> None:
    from client.gateway.app import create_app

    settings = GatewaySettings.load(
        tokens_file=tokens_file[0], rate_limit_per_minute=100000, rate_limit_burst=100000
    )
    headers = {"Authorization": f"Bearer {tokens_file[1]}"}
    chats = [capacity_client.conversation() for _ in range(CONVERSATIONS)]
    with GatewayServer(create_app(settings, capacity_client)) as gateway:
        try:
            for chat in chats:  # hold QUANTUM tokens of cache each
                chat.send("Hi!", GenerationParams(max_new_tokens=16)).wait()
            left = CACHE_TOKENS - QUANTUM * CONVERSATIONS
            model = httpx.get(gateway.url + "/v1/models", headers=headers).json()["data"][0]
            body = {
                "model": model["id"],
                "messages": [{"role": "user", "content": "Tell me about the exam."}],
                "max_tokens": left + QUANTUM,
                "temperature": 0,
                "stream": True,
            }
            lines: list[str] = []
            with httpx.stream(
                "POST",
                gateway.url + "/v1/chat/completions",
                json=body,
                headers=headers,
                timeout=240,
            ) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line:
                        lines.append(line)
                    if line == ": waiting for server capacity":
                        for chat in chats:  # their cache goes back: the request gets its turn
                            chat.close()
            assert ": waiting for server capacity" in lines
            data = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
            assert data[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
            assert "".join(c["choices"][0]["delta"].get("content") or "" for c in data)
            assert lines[-1] == "data: [DONE]"
            assert not any("error" in d for d in data)
        finally:
            for chat in chats:
                chat.close()
