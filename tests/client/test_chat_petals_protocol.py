"""chat.petals.dev's two APIs, driven by clients written from its README (the protocol
reference in the kit's shared docs), not from the gateway's code.

README facts under test: ``max_length`` counts the prefix, ``max_new_tokens`` does not; a
``generate`` with a ``stop_sequence`` keeps generating, answering ``stop: false`` until the last
message (``stop: true``); its frontend reads ``token_count`` from every message and looks for
"Maximum length exceeded"; the session belongs to the connection. Plus the kit's own rules for
browsers: no ``?token=`` unless enabled, Origin checks, idle sockets closed.
"""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from client import GenerationParams, SwarmClient
from tests.client.conftest import GatewayServer

pytestmark = pytest.mark.swarm

PROMPT = "A cat sat on"


class PetalsWS:
    """A client of /api/v2/generate as chat.petals.dev's README describes it."""

    def __init__(self, url: str, token: str | None, **connect_args: object) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._connection = connect(
            url + "/api/v2/generate", additional_headers=headers, open_timeout=30, **connect_args
        )
        self.ws = self._connection.__enter__()

    def request(self, **message: object) -> dict:
        self.ws.send(json.dumps(message))
        return json.loads(self.ws.recv(timeout=60))

    def open(self, max_length: int) -> dict:
        return self.request(type="open_inference_session", max_length=max_length)

    def generate_all(self, **message: object) -> list[dict]:
        """Every reply to one generate, up to the one with stop: true (or an error)."""
        replies = [self.request(type="generate", **message)]
        while replies[-1].get("ok") and not replies[-1]["stop"]:
            replies.append(json.loads(self.ws.recv(timeout=60)))
        return replies

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


@pytest.fixture(scope="module")
def prompt_tokens(swarm_client: SwarmClient) -> int:
    return len(swarm_client.encode(PROMPT))


def test_generate_with_max_length_counts_the_prefix(gateway, token, swarm_client, prompt_tokens):
    client = PetalsWS(gateway.ws_url, token)
    try:
        assert client.open(max_length=30) == {"ok": True}
        (reply,) = client.generate_all(inputs=PROMPT, max_length=30)
    finally:
        client.close()
    expected = swarm_client.generate(PROMPT, GenerationParams(max_new_tokens=30 - prompt_tokens))
    assert reply["ok"] is True and reply["stop"] is True
    assert reply["outputs"] == expected.text
    assert reply["token_count"] == expected.completion_tokens == 30 - prompt_tokens


def test_stop_sequence_streams_step_by_step_with_token_counts(gateway, token, swarm_client):
    reference = swarm_client.generate(PROMPT, GenerationParams(max_new_tokens=40)).text
    # A stop sequence the greedy answer really contains, a few tokens in.
    stop = reference[6:9]
    assert len(stop) == 3 and stop not in reference[:6] + stop[:-1]
    client = PetalsWS(gateway.ws_url, token)
    try:
        client.open(max_length=128)
        replies = client.generate_all(inputs=PROMPT, max_new_tokens=1, stop_sequence=stop)
    finally:
        client.close()
    assert all(r["ok"] for r in replies), replies
    assert [r["stop"] for r in replies] == [False] * (len(replies) - 1) + [True]
    assert all(r["token_count"] == 1 for r in replies)  # one token per step, as asked
    assert "".join(r["outputs"] for r in replies) == reference[: reference.index(stop)]


def test_maximum_length_exceeded_names_itself(gateway, token, prompt_tokens):
    client = PetalsWS(gateway.ws_url, token)
    try:
        client.open(max_length=prompt_tokens + 4)
        (first,) = client.generate_all(inputs=PROMPT, max_new_tokens=3)
        assert first["ok"] is True and first["token_count"] == 3
        (full,) = client.generate_all(inputs=" and", max_new_tokens=3)
    finally:
        client.close()
    assert full["ok"] is False and "Maximum length exceeded" in full["traceback"]


def test_generate_needs_max_length_or_max_new_tokens(gateway, token):
    client = PetalsWS(gateway.ws_url, token)
    try:
        client.open(max_length=64)
        (reply,) = client.generate_all(inputs=PROMPT)
    finally:
        client.close()
    assert reply["ok"] is False and "max_new_tokens" in reply["traceback"]


def test_http_generate_max_length_and_max_new_tokens(gateway, token, swarm_client, prompt_tokens):
    url, headers = gateway.url + "/api/v1/generate", {"Authorization": f"Bearer {token}"}
    expected = swarm_client.generate(PROMPT, GenerationParams(max_new_tokens=8)).text
    by_total = httpx.post(
        url, data={"inputs": PROMPT, "max_length": str(prompt_tokens + 8)}, headers=headers
    )
    by_new = httpx.post(url, data={"inputs": PROMPT, "max_new_tokens": "8"}, headers=headers)
    assert by_total.json() == by_new.json() == {"ok": True, "outputs": expected}
    neither = httpx.post(url, data={"inputs": PROMPT}, headers=headers)
    assert neither.status_code == 400 and neither.json()["ok"] is False
    assert "max_length" in neither.json()["traceback"]


def test_query_token_is_off_by_default_and_can_be_enabled(gateway, gateway_factory, token):
    with connect(f"{gateway.ws_url}/api/v2/generate?token={token}", open_timeout=30) as ws:
        refused = json.loads(ws.recv(timeout=30))
    assert refused["ok"] is False and "bearer token" in refused["traceback"]
    enabled = gateway_factory(allow_query_token=True)
    with connect(f"{enabled.ws_url}/api/v2/generate?token={token}", open_timeout=30) as ws:
        ws.send(json.dumps({"type": "open_inference_session", "max_length": 32}))
        assert json.loads(ws.recv(timeout=30)) == {"ok": True}


def test_websocket_origin_check(gateway_factory, token):
    server = gateway_factory(cors_origins="https://chat.example.edu")
    with pytest.raises(InvalidStatus) as caught:
        PetalsWS(server.ws_url, token, origin="https://evil.example")
    assert caught.value.response.status_code == 403
    allowed = PetalsWS(server.ws_url, token, origin="https://chat.example.edu")
    try:
        assert allowed.open(max_length=32) == {"ok": True}
    finally:
        allowed.close()


def test_idle_socket_is_closed_and_frees_its_slot(gateway_factory, token):
    server: GatewayServer = gateway_factory(ws_idle_timeout_s=1, max_concurrent_per_token=1)
    idle = PetalsWS(server.ws_url, token)
    try:
        assert idle.open(max_length=32) == {"ok": True}
        # Say nothing: the gateway closes the idle socket with a message that says why.
        closing = json.loads(idle.ws.recv(timeout=60))
        assert closing["ok"] is False and "ws_idle_timeout_s" in closing["traceback"]
    finally:
        idle.close()
    # Its slot (this token may hold one) is free again: a new session opens.
    again = PetalsWS(server.ws_url, token)
    try:
        assert again.open(max_length=32) == {"ok": True}
    finally:
        again.close()
    text = httpx.get(server.url + "/metrics").text
    assert 'petals_gateway_requests_total{code="408",route="/api/v2/generate"}' in text
