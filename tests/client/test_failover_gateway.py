"""The same crash during a gateway stream: an OpenAI SSE stream and a chat.petals.dev WebSocket
session, on a replicated loopback swarm; each answer completes and equals the library's. And a
stream that cannot recover (both replicas of a range hung): keep-alive comments while it waits
and while a second request is queued behind it, then an error event, then ``[DONE]``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from websockets.sync.client import connect

from client import ClientSettings, GenerationParams, SwarmClient
from client.gateway.settings import GatewaySettings
from swarm.localswarm import LocalSwarm
from tests.client.conftest import GatewayServer, heal, poll, route_peers

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


# A client that gives up fast (a hung server counts as failed after 2 s; two recoveries at most)
# and runs one generation at a time, so a second request waits in the queue for the first.
GIVE_UP_FAST = {
    "step_timeout": 2.0,
    "token_timeout": 2.0,
    "connect_timeout": 2.0,
    "max_retries": 2,
    "recovery_timeout": 10.0,
    "max_concurrent_streams": 1,
}
KEEPALIVE = ": keep-alive"


def _sse_lines(response: httpx.Response) -> Iterator[str]:
    return (line for line in response.iter_lines() if line)


def _content(line: str) -> str | None:
    if not line.startswith("data: {"):
        return None
    choices = json.loads(line[6:]).get("choices") or [{}]
    return choices[0].get("delta", {}).get("content")


def test_a_stream_that_cannot_recover_ends_with_an_error_event_then_done(
    replicated_swarm: LocalSwarm, failover_client: SwarmClient, tokens_file: tuple[Path, str]
) -> None:
    from client.gateway.app import create_app

    length = GenerationParams(max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW)
    reference = failover_client.generate(QUESTION, length).text
    tail = [h for h in replicated_swarm.servers if str(h.blocks) == "4:8"]
    assert len(tail) == 2
    headers = {"Authorization": f"Bearer {tokens_file[1]}"}
    settings = GatewaySettings.load(
        tokens_file=tokens_file[0],
        rate_limit_per_minute=100000,
        rate_limit_burst=100000,
        keepalive_s=0.1,
    )
    client = SwarmClient(replicated_swarm.settings(), ClientSettings(**GIVE_UP_FAST))
    with client, GatewayServer(create_app(settings, client)) as server:
        url = server.url + "/v1/chat/completions"
        body = {
            "model": client.model_name,
            "messages": QUESTION,
            "max_tokens": MAX_NEW,
            "min_tokens": MAX_NEW,
            "temperature": 0,
            "stream": True,
        }
        queued_events: list[str] = []

        def queued_request() -> None:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as response:
                assert response.status_code == 200
                queued_events.extend(_sse_lines(response))

        second = threading.Thread(target=queued_request, daemon=True)
        gauge = server.app.state.metrics.queued
        events: list[str] = []
        try:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as response:
                assert response.status_code == 200
                pieces = 0
                for line in _sse_lines(response):
                    events.append(line)
                    pieces += bool(_content(line))
                    if pieces == KILL_AFTER and second.ident is None:
                        for handle in tail:  # no replica of blocks 4-7 answers any more
                            replicated_swarm.pause_server(handle)
                        second.start()  # waits for the one generation slot
                        poll(lambda: gauge._value.get() == 2, 30, "the second request to queue")
            second.join(timeout=120)
            # A third request, by the official openai package: it sees the error event.
            oai = openai.OpenAI(base_url=server.url + "/v1", api_key=tokens_file[1], max_retries=0)
            with pytest.raises(openai.APIError) as caught:
                stream: Any = oai.chat.completions.create(
                    model=client.model_name,
                    messages=QUESTION,  # type: ignore[arg-type]
                    max_tokens=MAX_NEW,
                    temperature=0,
                    stream=True,
                )
                for _ in stream:
                    pass
        finally:
            heal(replicated_swarm)

    assert not second.is_alive()
    # The first stream: its answer so far, then comments while it waits, then the error, [DONE].
    error_at = next(i for i, e in enumerate(events) if e.startswith('data: {"error"'))
    answered = "".join(_content(e) or "" for e in events[:error_at])
    assert answered and reference.startswith(answered)
    assert len(answered) < len(reference)
    last_piece = max(i for i, e in enumerate(events) if _content(e))
    assert KEEPALIVE in events[last_piece:error_at]
    assert not any('"finish_reason": "' in e for e in events)  # it never claimed to finish
    error = json.loads(events[error_at][6:])["error"]
    assert error["code"] == "swarm_unavailable" and "Traceback" not in error["message"]
    assert events[error_at + 1 :] == ["data: [DONE]"]
    # The queued one: its role chunk, comments while queued, no text, the error, [DONE].
    assert queued_events and queued_events[-1] == "data: [DONE]"
    assert json.loads(queued_events[-2][6:])["error"]["code"] == "swarm_unavailable"
    assert KEEPALIVE in queued_events[1:-2]
    assert not any(_content(e) for e in queued_events)
    assert caught.value.body is not None and "swarm_unavailable" in str(caught.value.body)
