"""The same crash during a gateway stream: an OpenAI SSE stream and a chat.petals.dev WebSocket
session, on a replicated loopback swarm; each answer completes and equals the library's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from client import GenerationParams, SwarmClient
from client.gateway.settings import GatewaySettings
from swarm.localswarm import LocalSwarm
from tests.client.conftest import GatewayServer, heal, route_peers

pytestmark = pytest.mark.swarm

QUESTION = [{"role": "user", "content": "When is the exam?"}]
MAX_NEW = 64
KILL_AFTER = 3  # streamed pieces before the crash


@pytest.fixture(scope="module")
def failover_gateway(
    failover_client: SwarmClient, tokens_file: tuple[Path, str]
) -> Iterator[GatewayServer]:
    from client.gateway.app import create_app

    settings = GatewaySettings.load(
        tokens_file=tokens_file[0], rate_limit_per_minute=100000, rate_limit_burst=100000
    )
    server = GatewayServer(create_app(settings, failover_client)).__enter__()
    yield server
    server.__exit__()


def crash_route(swarm: LocalSwarm, client: SwarmClient) -> list[str]:
    """SIGKILL the servers the client's running answer goes through."""
    used = route_peers(client)
    victims = [h for h in swarm.servers if h.identity.peer_id in used]
    for victim in victims:
        swarm.kill_server(victim)
    return [v.name for v in victims]


def test_sse_stream_survives_a_crash(
    failover_gateway: GatewayServer,
    failover_client: SwarmClient,
    replicated_swarm: LocalSwarm,
    tokens_file: tuple[Path, str],
) -> None:
    expected = failover_client.generate(QUESTION, GenerationParams(max_new_tokens=MAX_NEW)).text
    headers = {"Authorization": f"Bearer {tokens_file[1]}"}
    model = httpx.get(failover_gateway.url + "/v1/models", headers=headers).json()["data"][0]
    body = {
        "model": model["id"],
        "messages": QUESTION,
        "max_tokens": MAX_NEW,
        "temperature": 0,
        "stream": True,
    }
    before = failover_client.recovery_metrics.recoveries_total
    pieces, killed = [], []
    try:
        with httpx.stream(
            "POST",
            failover_gateway.url + "/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=120,
        ) as response:
            events = []
            for line in response.iter_lines():
                if not line:
                    continue
                events.append(line)
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    pieces.append(delta)
                    if len(pieces) == KILL_AFTER:
                        killed = crash_route(replicated_swarm, failover_client)
    finally:
        heal(replicated_swarm)
    assert killed
    assert events[-1] == "data: [DONE]"
    assert "".join(pieces) == expected
    assert failover_client.recovery_metrics.recoveries_total > before
    exposed = httpx.get(failover_gateway.url + "/metrics").text
    recoveries = [
        float(line.split()[1])
        for line in exposed.splitlines()
        if line.startswith("petals_client_recoveries_total ")
    ]
    assert recoveries and recoveries[0] > before  # the gateway's /metrics shows the recovery


def test_websocket_session_survives_a_crash(
    failover_gateway: GatewayServer,
    failover_client: SwarmClient,
    replicated_swarm: LocalSwarm,
    tokens_file: tuple[Path, str],
) -> None:
    prompt = "### User:\nWhat is a block?\n\n### Assistant:\n"
    expected = failover_client.generate(
        prompt, GenerationParams(max_new_tokens=200, stop=("\n\n###",))
    ).text
    before = failover_client.recovery_metrics.recoveries_total
    url = f"{failover_gateway.ws_url}/api/v2/generate"
    auth = {"Authorization": f"Bearer {tokens_file[1]}"}
    replies, killed = [], []
    try:
        with connect(url, open_timeout=30, additional_headers=auth) as ws:
            ws.send(json.dumps({"type": "open_inference_session", "max_length": 512}))
            assert json.loads(ws.recv(timeout=30)) == {"ok": True}
            ws.send(
                json.dumps(
                    {
                        "type": "generate",
                        "inputs": prompt,
                        "stop_sequence": "</s>",
                        "extra_stop_sequences": ["\n\n###"],
                        "max_new_tokens": 1,
                    }
                )
            )
            while True:
                reply = json.loads(ws.recv(timeout=120))
                assert reply["ok"] is True, reply
                replies.append(reply)
                if len(replies) == KILL_AFTER:
                    killed = crash_route(replicated_swarm, failover_client)
                if reply["stop"]:
                    break
    finally:
        heal(replicated_swarm)
    assert killed
    assert "".join(r["outputs"] for r in replies) == expected
    assert failover_client.recovery_metrics.recoveries_total > before
