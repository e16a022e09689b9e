"""Failover on a real replicated loopback swarm (two servers per block range): crashed (SIGKILL)
and hung (SIGSTOP) servers mid-answer, a request right after a crash, and a range with no
replica left. Answers are compared with the same client's uninterrupted greedy answer."""

from __future__ import annotations

import random
import time

import pytest

from client import GenerationFailed, GenerationParams, SwarmClient
from client.routes import record_expirations
from swarm.dht import open_dht
from swarm.localswarm import LocalSwarm, ServerHandle
from tests.client.conftest import heal, poll, route_peers

pytestmark = pytest.mark.swarm

PROMPT = [{"role": "user", "content": "What is a block?"}]
PARAMS = GenerationParams(max_new_tokens=96, min_new_tokens=96)
KILL_AFTER = 8  # deltas received before the crash: mid-answer
ROUNDS = 5


@pytest.fixture(scope="module")
def reference(failover_client: SwarmClient) -> str:
    """The uninterrupted greedy answer (computed here, on the same machine)."""
    return failover_client.generate(PROMPT, PARAMS).text


def replicas(swarm: LocalSwarm) -> dict[str, list[ServerHandle]]:
    ranges: dict[str, list[ServerHandle]] = {}
    for handle in swarm.servers:
        ranges.setdefault(str(handle.blocks), []).append(handle)
    return ranges


def answer_with(client: SwarmClient, on_delta: int, action: object) -> tuple[str, object]:
    """Stream PROMPT; after ``on_delta`` deltas call ``action()``; return the text and stats."""
    pieces = []
    stream = client.stream(PROMPT, PARAMS)
    for index, delta in enumerate(stream):
        pieces.append(delta)
        if index + 1 == on_delta:
            action()  # type: ignore[operator]
    return "".join(pieces), stream.result


def test_crashes_mid_answer_never_change_the_answer(
    failover_client: SwarmClient, replicated_swarm: LocalSwarm, reference: str
) -> None:
    rng = random.Random(20261202)
    stalls: list[float] = []
    for _ in range(ROUNDS):
        victims = [rng.choice(pair) for pair in replicas(replicated_swarm).values()]
        text, stats = answer_with(
            failover_client,
            KILL_AFTER,
            lambda victims=victims: [replicated_swarm.kill_server(v) for v in victims],
        )
        assert text == reference
        assert stats.text == reference  # type: ignore[attr-defined]
        stalls.extend(stats.stall_s)  # type: ignore[attr-defined]
        heal(replicated_swarm)
    print(f"stall at failover over {len(stalls)} recoveries: {[round(s, 2) for s in stalls]}")
    assert stalls, "no crash hit a server on the answer's route in five rounds"
    assert failover_client.recovery_metrics.recoveries_total >= len(stalls)


def test_a_new_request_right_after_a_crash_succeeds(
    failover_client: SwarmClient, replicated_swarm: LocalSwarm, reference: str
) -> None:
    # Crash the servers the last route used: the next route would pick them (lowest latency).
    answer_with(failover_client, 1, lambda: None)
    used = route_peers(failover_client) or {s.identity.peer_id for s in replicated_swarm.servers}
    victims = [h for h in replicated_swarm.servers if h.identity.peer_id in used][:2]
    victims = victims or [replicas(replicated_swarm)["0:4"][0]]
    for victim in victims:
        replicated_swarm.kill_server(victim)
    text = failover_client.generate(PROMPT, PARAMS).text
    assert text == reference
    uids = [f"{replicated_swarm.dht_prefix}.{i}" for i in range(replicated_swarm.num_blocks)]
    with open_dht(replicated_swarm.initial_peers) as dht:
        lingering = record_expirations(dht, uids, frozenset(v.identity.peer_id for v in victims))
    assert lingering, "the dead servers' records had expired: the test proved nothing"
    heal(replicated_swarm)


def test_a_hung_server_counts_as_failed_after_the_step_timeout(
    failover_client: SwarmClient, replicated_swarm: LocalSwarm, reference: str
) -> None:
    paused: list[ServerHandle] = []

    def hang_route() -> None:
        used = route_peers(failover_client)
        for handle in replicated_swarm.servers:
            if handle.identity.peer_id in used:
                replicated_swarm.pause_server(handle)
                paused.append(handle)

    before = failover_client.recovery_metrics.recoveries_total
    try:
        text, stats = answer_with(failover_client, KILL_AFTER, hang_route)
    finally:
        heal(replicated_swarm)
    assert paused
    assert text == reference
    assert stats.recoveries >= 1  # type: ignore[attr-defined]
    assert failover_client.recovery_metrics.recoveries_total > before
    # the hung servers are back on routes once they announce again
    poll(
        lambda: (
            (failover_client.refresh_quarantine(0) or True)
            and not failover_client.quarantine.peers & {h.identity.peer_id for h in paused}
        ),
        120,
        "the resumed servers to leave quarantine",
        every=0.5,
    )


def test_no_replica_left_fails_clearly_naming_the_blocks(
    failover_client: SwarmClient, replicated_swarm: LocalSwarm
) -> None:
    failed_before = failover_client.recovery_metrics.failed_after_budget_total
    pair = replicas(replicated_swarm)["4:8"]
    started = time.monotonic()
    with pytest.raises(GenerationFailed) as caught:
        answer_with(
            failover_client, KILL_AFTER, lambda: [replicated_swarm.kill_server(h) for h in pair]
        )
    took = time.monotonic() - started
    message = str(caught.value)
    print(f"failed after {took:.1f}s: {message}")
    assert "blocks 4-7" in message
    assert failover_client.recovery_metrics.failed_after_budget_total == failed_before + 1
    heal(replicated_swarm)
    assert failover_client.generate(PROMPT, PARAMS).stop_reason == "length"
