"""Every cheap bound is checked before the prompt is tokenized, on the real gateway app.

The swarm's real tokenizer is wrapped to count its encodings (every encoding of a fast tokenizer,
``tokenizer(text)`` or ``encode``, goes through ``_batch_encode_plus``). Each refused request --
auth, model, unsupported parameters, sizes, limits, rate, concurrency, a full queue, and on the
WebSocket each generate message's own bounds -- must be refused with no encoding at all; a valid
request after them must encode (so the counter sees what the gateway does).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from client import SwarmClient
from tests.client.conftest import GatewayServer

pytestmark = pytest.mark.swarm

QUESTION = [{"role": "user", "content": "What is a block?"}]


@pytest.fixture
def encodings(swarm_client: SwarmClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the real tokenizer encodes while the test runs (any instance of its class:
    the gateway's own copy for assistant prefills too)."""
    cls = type(swarm_client.tokenizer)
    original = cls._batch_encode_plus
    seen: list[str] = []

    def counting(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(str(item)[:40] for item in batch)
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(cls, "_batch_encode_plus", counting)
    return seen


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refusals(model: str, token: str) -> list[tuple[str, str, dict[str, Any], int]]:
    """(what, route, httpx.post arguments, expected status) of requests the shared gateway
    (max_prompt_chars 4000, max_new_tokens_limit 200) refuses."""
    auth = _headers(token)
    chat, comp, gen = "/v1/chat/completions", "/v1/completions", "/api/v1/generate"

    def ask(**extra: Any) -> dict[str, Any]:
        return {"json": {"model": model, "messages": QUESTION, **extra}, "headers": auth}

    def body(**values: Any) -> dict[str, Any]:
        return {"json": {"model": model, **values}, "headers": auth}

    long_message = [{"role": "user", "content": "x" * 4001}]

    return [
        ("no token", chat, {"json": {"model": model, "messages": QUESTION}}, 401),
        ("a wrong token", chat, {**ask(), "headers": _headers(token + "x")}, 401),
        ("another model", chat, {**ask(), "json": {"model": "gpt-4", "messages": QUESTION}}, 404),
        ("tools", chat, ask(tools=[{"type": "function", "function": {"name": "f"}}]), 400),
        ("n = 2", chat, ask(n=2), 400),
        ("response_format", chat, ask(response_format={"type": "json_object"}), 400),
        ("logprobs", chat, ask(logprobs=True), 400),
        ("presence_penalty", chat, ask(presence_penalty=0.5), 400),
        ("temperature 3", chat, ask(temperature=3), 400),
        ("max_tokens over the limit", chat, ask(max_tokens=201), 400),
        ("min_tokens over max_tokens", chat, ask(max_tokens=4, min_tokens=8), 400),
        ("too many characters", chat, body(messages=long_message), 400),
        ("a tool message", chat, body(messages=[*QUESTION, {"role": "tool", "content": "1"}]), 400),
        ("no user message", chat, body(messages=[]), 400),
        ("not JSON", chat, {"content": b"{", "headers": auth}, 400),
        ("a body over max_body_bytes", chat, {"content": b" " * 1_000_001, "headers": auth}, 413),
        ("two prompts", comp, body(prompt=["a", "b"]), 400),
        ("suffix", comp, body(prompt="a", suffix="b"), 400),
        ("a long prompt", comp, body(prompt="y" * 4001, max_tokens=1), 400),
        ("no length given", gen, {"data": {"inputs": "A cat"}, "headers": auth}, 400),
        (
            "max_new_tokens over the limit",
            gen,
            {"data": {"inputs": "A cat", "max_new_tokens": "201"}, "headers": auth},
            400,
        ),
        (
            "long inputs, with max_length",
            gen,
            {"data": {"inputs": "z" * 4001, "max_length": "9000"}, "headers": auth},
            400,
        ),
        (
            "top_k out of range, with max_length",
            gen,
            {"data": {"inputs": "A cat", "max_length": "20", "top_k": "-1"}, "headers": auth},
            400,
        ),
    ]


def test_http_refusals_tokenize_nothing(
    gateway: GatewayServer, token: str, swarm_client: SwarmClient, encodings: list[str]
) -> None:
    model = swarm_client.model_name
    for what, route, kwargs, status in _refusals(model, token):
        response = httpx.post(gateway.url + route, timeout=60, **kwargs)
        assert response.status_code == status, (what, response.text)
        assert encodings == [], f"{what}: refused after tokenizing {encodings}"
    # The counter sees the gateway's tokenization: a valid request of each route encodes.
    for route, body in [
        ("/v1/chat/completions", {"model": model, "messages": QUESTION, "max_tokens": 1}),
        ("/v1/completions", {"model": model, "prompt": "A cat", "max_tokens": 1}),
        ("/api/v1/generate", {"inputs": "A cat", "max_length": 12}),
    ]:
        before = len(encodings)
        response = httpx.post(gateway.url + route, json=body, headers=_headers(token), timeout=60)
        assert response.status_code == 200, response.text
        assert len(encodings) > before, route


def _opened(server: GatewayServer, token: str, max_length: int = 64) -> ClientConnection:
    """A WebSocket with an open inference session (it holds a slot and a place in the queue)."""
    ws = connect(
        server.ws_url + "/api/v2/generate", additional_headers=_headers(token), open_timeout=30
    ).__enter__()
    ws.send(json.dumps({"type": "open_inference_session", "max_length": max_length}))
    assert json.loads(ws.recv(timeout=30)) == {"ok": True}
    return ws


@pytest.mark.parametrize(
    ("what", "step"),
    [
        ("no length given", {"inputs": "A cat"}),
        ("max_length over the session's", {"inputs": "A cat", "max_length": 65}),
        ("no inputs in the first step", {"max_new_tokens": 1}),
        ("too many characters", {"inputs": "x" * 4001, "max_new_tokens": 1}),
        ("max_new_tokens out of range", {"inputs": "A cat", "max_new_tokens": 0}),
    ],
)
def test_websocket_refusals_tokenize_nothing(
    gateway: GatewayServer, token: str, encodings: list[str], what: str, step: dict[str, Any]
) -> None:
    with _opened(gateway, token) as ws:
        ws.send(json.dumps({"type": "generate", **step}))
        reply = json.loads(ws.recv(timeout=30))
    assert reply["ok"] is False, what
    assert encodings == [], f"{what}: refused after tokenizing {encodings}"
    with _opened(gateway, token) as ws:  # and a valid step does encode
        ws.send(json.dumps({"type": "generate", "inputs": "A cat", "max_new_tokens": 1}))
        assert json.loads(ws.recv(timeout=60))["ok"] is True
    assert encodings


VALID = [
    ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 1}),
    ("/v1/completions", {"prompt": "A cat", "max_tokens": 1}),
    ("/api/v1/generate", {"inputs": "A cat", "max_length": 12}),
]


def _all_refused(
    server: GatewayServer, token: str, model: str, status: int, says: str, encodings: list[str]
) -> None:
    """Each route refuses a valid request with ``status`` (its message names the limit:
    ``says``) and tokenizes nothing."""
    for route, body in VALID:
        response = httpx.post(
            server.url + route, json={"model": model, **body}, headers=_headers(token), timeout=60
        )
        assert response.status_code == status, (route, response.text)
        assert says in response.text and int(response.headers["retry-after"]) >= 1
        assert encodings == [], f"{route}: refused ({says}) after tokenizing {encodings}"


def test_rate_and_concurrency_limits_tokenize_nothing(
    gateway_factory: Callable[..., GatewayServer],
    token: str,
    swarm_client: SwarmClient,
    encodings: list[str],
) -> None:
    model = swarm_client.model_name
    rated = gateway_factory(rate_limit_per_minute=1, rate_limit_burst=1)
    with _opened(rated, token) as ws:  # takes the one request of the burst
        _all_refused(rated, token, model, 429, "rate limit of 1 requests per minute", encodings)
        ws.send(json.dumps({"type": "generate", "inputs": "A cat", "max_new_tokens": 1}))
        assert "rate limit" in json.loads(ws.recv(timeout=30))["traceback"]
    assert encodings == []
    single = gateway_factory(max_concurrent_per_token=1)
    with _opened(single, token):  # holds the token's one slot
        _all_refused(single, token, model, 429, "(max_concurrent_per_token)", encodings)


def test_a_full_queue_tokenizes_nothing(
    gateway_factory: Callable[..., GatewayServer],
    token: str,
    swarm_client: SwarmClient,
    encodings: list[str],
) -> None:
    server = gateway_factory(max_queued=0)
    sockets = [_opened(server, token) for _ in range(swarm_client.options.max_concurrent_streams)]
    try:  # each open session holds a place: the gateway is full
        _all_refused(server, token, swarm_client.model_name, 503, "max_queued)", encodings)
    finally:
        for ws in sockets:
            ws.close()
