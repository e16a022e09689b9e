"""SwarmClient and Conversation on the real loopback swarm (tiny model, two trusted servers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from client import CancelToken, GenerationParams, PromptTooLong, SwarmClient
from swarm.localswarm import LocalSwarm
from tests.client.conftest import client_peer_suffix, inference_sessions, poll

pytestmark = pytest.mark.swarm

QUESTION = [{"role": "user", "content": "What is a block?"}]
GREEDY = GenerationParams(max_new_tokens=40)


def test_sync_and_async_streams_agree_and_report_stats(swarm_client: SwarmClient):
    stream = swarm_client.stream(QUESTION, GREEDY)
    pieces = list(stream)
    stats = stream.result
    assert len(pieces) > 1 and "".join(pieces) == stats.text
    assert stats.prompt_tokens > 0 and 0 < stats.completion_tokens <= 40
    assert stats.time_to_first_token_s is not None and stats.time_to_first_token_s > 0
    assert stats.tokens_per_second is not None and stats.tokens_per_second > 0
    assert stats.stop_reason in ("eos", "length")

    async def collect() -> tuple[str, str]:
        astream = swarm_client.astream(QUESTION, GREEDY)
        text = "".join([piece async for piece in astream])
        return text, astream.result.text

    assert asyncio.run(collect()) == (stats.text, stats.text)


def test_length_and_stop_sequences(swarm_client: SwarmClient):
    long = GenerationParams(max_new_tokens=30, min_new_tokens=30)
    stats = swarm_client.generate("The swarm", long)
    assert stats.stop_reason == "length" and stats.completion_tokens == 30
    cut = stats.text[10:14]
    stopped = swarm_client.generate("The swarm", long.model_copy(update={"stop": (cut,)}))
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.text == stats.text[: stats.text.index(cut)]


def test_cancel_stops_within_a_token_and_closes_the_session(
    swarm_client: SwarmClient, local_swarm: LocalSwarm
):
    suffix = client_peer_suffix(swarm_client)
    token = CancelToken()
    stream = swarm_client.stream(
        "Once upon a time", GenerationParams(max_new_tokens=400, min_new_tokens=400), cancel=token
    )
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 5:
            token.cancel()
    assert stream.result.stop_reason == "cancelled"
    assert stream.result.completion_tokens <= 6  # the token in flight, at most
    poll(
        lambda: all(o == c for o, c in inference_sessions(local_swarm, suffix).values()),
        20,
        "every server to log the close of each of this client's sessions",
    )


def test_a_prompt_longer_than_the_window_is_refused_naming_the_limit(swarm_client: SwarmClient):
    window = swarm_client.context_window
    with pytest.raises(PromptTooLong) as caught:
        swarm_client.prepare("x" * window, GenerationParams(max_new_tokens=10))
    assert str(window) in str(caught.value)


def test_long_histories_are_trimmed_oldest_first_keeping_the_system_prompt(
    swarm_client: SwarmClient,
):
    system = {"role": "system", "content": "You answer questions about the course."}
    history = [system]
    for i in range(6):
        history += [
            {"role": "user", "content": f"question {i} " + "x" * 200},
            {"role": "assistant", "content": "answer " + "y" * 200},
        ]
    history.append({"role": "user", "content": "What is a block?"})
    prepared = swarm_client.prepare(history, GenerationParams(max_new_tokens=200))
    assert prepared.trimmed_messages >= 2 and prepared.trimmed_messages % 2 == 0
    assert prepared.prompt_tokens <= swarm_client.context_window - 200
    text = swarm_client.tokenizer.decode(prepared.input_ids)
    assert system["content"] in text and "What is a block?" in text
    assert "question 0 " not in text and "question 5 " in text


def test_conversation_reuses_its_session_and_answers_like_a_fresh_one(
    swarm_client: SwarmClient, local_swarm: LocalSwarm
):
    suffix = client_peer_suffix(swarm_client)
    params = GenerationParams(max_new_tokens=30)
    with swarm_client.conversation("You are a helpful assistant.") as conversation:
        first = conversation.send("What is a block?", params)
        first.wait()
        opened = sum(o for o, _ in inference_sessions(local_swarm, suffix).values())
        second = conversation.send("Who runs the servers?", params)
        second.wait()
        assert not first.result.reused_session and second.result.reused_session
        # no new server-side session was opened for the second turn
        assert sum(o for o, _ in inference_sessions(local_swarm, suffix).values()) == opened
        messages = conversation.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    fresh = swarm_client.generate(messages[:-1], params)  # the same prompt, a fresh session
    assert fresh.text == second.result.text
    assert second.result.prompt_tokens == fresh.prompt_tokens


def test_conversation_trims_and_reset_keeps_the_system_prompt(swarm_client: SwarmClient):
    params = GenerationParams(max_new_tokens=100)
    with swarm_client.conversation("Be brief.") as conversation:
        long_question = "Tell me about blocks. " * 18  # ~400 tokens, byte-level tokenizer
        results = []
        for _ in range(3):
            stream = conversation.send(long_question, params)
            stream.wait()
            results.append(stream.result)
        assert results[0].trimmed_messages == 0
        assert sum(r.trimmed_messages for r in results) > 0
        assert conversation.messages[0] == {"role": "system", "content": "Be brief."}
        conversation.reset()
        assert conversation.messages == [{"role": "system", "content": "Be brief."}]
        again = conversation.send("What is a block?", GenerationParams(max_new_tokens=5))
        assert again.text()


def test_closing_a_client_stops_its_running_streams(local_swarm: LocalSwarm):
    client = SwarmClient(local_swarm.settings()).start()
    suffix = client_peer_suffix(client)
    stream = client.stream(
        "Once upon a time", GenerationParams(max_new_tokens=500, min_new_tokens=500)
    )
    assert next(stream)
    client.close()
    assert stream.wait(timeout=30).stop_reason == "cancelled"
    poll(
        lambda: all(o == c for o, c in inference_sessions(local_swarm, suffix).values()),
        20,
        "the servers to log the close of the stopped stream's session",
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a child belongs to the thread that started it)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def test_the_clients_own_p2pd_asks_no_router_for_a_port_mapping(swarm_client: SwarmClient):
    """The client's DHT (a forked hivemind process) runs a p2pd of its own: swarm.compat turns
    hivemind's default UPnP/NAT-PMP port mapping off there too, not only on servers."""
    swarm_client.generate("The swarm", GenerationParams(max_new_tokens=2))
    p2pds = []
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            if argv and Path(argv[0]).name == "p2pd":
                p2pds.append(argv)
    assert p2pds, "the client should run its own p2pd"
    assert all("-natPortMap=0" in argv for argv in p2pds), p2pds
