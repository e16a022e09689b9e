"""The gateway on real HTTP and WebSockets, with the official ``openai`` package as a client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from websockets.sync.client import connect

from client import GenerationParams, SwarmClient
from swarm.localswarm import LocalSwarm
from tests.client.conftest import GatewayServer, client_peer_suffix, inference_sessions, poll

pytestmark = pytest.mark.swarm

QUESTION = [{"role": "user", "content": "What is a block?"}]


@pytest.fixture(scope="module")
def oai(gateway: GatewayServer, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)


@pytest.fixture(scope="module")
def expected(swarm_client: SwarmClient) -> str:
    """What the library answers greedily; every route must say the same."""
    return swarm_client.generate(QUESTION, GenerationParams(max_new_tokens=24)).text


def _model(oai: openai.OpenAI) -> str:
    return oai.models.list().data[0].id


def test_models_lists_the_served_model(oai, swarm_client):
    models = oai.models.list().data
    assert [m.id for m in models] == [swarm_client.model_name]


def test_chat_completion_plain_and_streamed(oai, expected):
    model = _model(oai)
    reply = oai.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=24, temperature=0
    )
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 0

    chunks = list(
        oai.chat.completions.create(
            model=model,
            messages=QUESTION,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == reply.choices[0].finish_reason


def test_completion_plain_and_streamed(oai, swarm_client):
    model = _model(oai)
    prompt = "The swarm"
    direct = swarm_client.generate(prompt, GenerationParams(max_new_tokens=16)).text
    reply = oai.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0)
    assert reply.choices[0].text == direct
    streamed = oai.completions.create(
        model=model, prompt=prompt, max_tokens=16, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == direct
    echoed = oai.completions.create(
        model=model, prompt=prompt, max_tokens=16, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompt + direct


def test_sse_ends_with_done(gateway, token):
    body = {"model": "x", "messages": QUESTION, "max_tokens": 5, "temperature": 0, "stream": True}
    body["model"] = httpx.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}
    ).json()["data"][0]["id"]
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_petals_http_api_json_and_form(gateway, token, swarm_client):
    prompt = "### User:\nWhat is a block?\n\n### Assistant:\n"
    direct = swarm_client.generate(prompt, GenerationParams(max_new_tokens=12)).text
    headers = {"Authorization": f"Bearer {token}"}
    url = gateway.url + "/api/v1/generate"
    as_json = httpx.post(url, json={"inputs": prompt, "max_new_tokens": 12}, headers=headers)
    assert as_json.status_code == 200 and as_json.json() == {"ok": True, "outputs": direct}
    prompt_tokens = len(swarm_client.encode(prompt))
    as_form = httpx.post(
        url,
        data={"inputs": prompt, "max_length": str(prompt_tokens + 12), "do_sample": "0"},
        headers=headers,
    )
    assert as_form.status_code == 200 and as_form.json() == {"ok": True, "outputs": direct}
    bad = httpx.post(url, data={"inputs": prompt, "top_p": "7"}, headers=headers)
    assert bad.status_code == 400
    assert bad.json()["ok"] is False and "top_p" in bad.json()["traceback"]


def test_petals_websocket_api_streams_and_continues_the_session(gateway, token, swarm_client):
    with connect(
        f"{gateway.ws_url}/api/v2/generate",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=30,
    ) as ws:
        ws.send(json.dumps({"type": "open_inference_session", "max_length": 512}))
        assert json.loads(ws.recv(timeout=30)) == {"ok": True}
        prompt = "### User:\nWhat is a block?\n\n### Assistant:\n"
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
        replies = []
        while True:
            reply = json.loads(ws.recv(timeout=60))
            assert reply["ok"] is True, reply
            replies.append(reply)
            if reply["stop"]:
                break
        first = "".join(r["outputs"] for r in replies)
        assert len(replies) > 2 and first
        ws.send(
            json.dumps(
                {
                    "type": "generate",
                    "inputs": "\n\n### User:\nAnd a server?\n\n### Assistant:\n",
                    "max_new_tokens": 5,
                }
            )
        )
        single = json.loads(ws.recv(timeout=60))
        assert single["ok"] is True and single["stop"] is True and single["token_count"] == 5
    # the streamed answer equals the library's, cut at the same stop sequence
    params = GenerationParams(max_new_tokens=200, stop=("\n\n###",))
    assert first == swarm_client.generate(prompt, params).text


def test_websocket_rejects_a_wrong_token(gateway):
    with connect(
        f"{gateway.ws_url}/api/v2/generate",
        additional_headers={"Authorization": "Bearer pk-wrong"},
        open_timeout=30,
    ) as ws:
        reply = json.loads(ws.recv(timeout=30))
    assert reply["ok"] is False and "token" in reply["traceback"]


@pytest.mark.parametrize(
    ("headers", "code"), [({}, 401), ({"Authorization": "Bearer pk-not-a-token"}, 401)]
)
def test_missing_or_wrong_token_is_401_in_each_apis_shape(gateway, headers, code):
    chat = httpx.post(gateway.url + "/v1/chat/completions", json={}, headers=headers)
    assert chat.status_code == code
    assert chat.json()["error"]["type"] == "authentication_error"
    assert chat.headers["www-authenticate"] == "Bearer"
    petals = httpx.post(gateway.url + "/api/v1/generate", data={"inputs": "x"}, headers=headers)
    assert petals.status_code == code and petals.json()["ok"] is False


def test_openai_client_sees_authentication_error(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="pk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_bounds_are_400s_that_name_the_limit(gateway, oai):
    model = _model(oai)
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x" * 4001}], max_tokens=5
        )
    assert "4000" in caught.value.message and "max_prompt_chars" in caught.value.message
    assert caught.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=model, prompt="hi", max_tokens=201)
    assert "200" in caught.value.message and "max_new_tokens_limit" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=model, messages=QUESTION, temperature=3)
    assert "temperature" in caught.value.message and "2" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=model, prompt="y" * 3000, max_tokens=200)
    assert "context window" in caught.value.message


def test_rate_limit_per_token(gateway_factory, token):
    limited = gateway_factory(rate_limit_per_minute=1, rate_limit_burst=2)
    client = openai.OpenAI(base_url=limited.url + "/v1", api_key=token, max_retries=0)
    model = client.models.list().data[0].id
    payload = {"model": model, "prompt": "a", "max_tokens": 1}
    codes = []
    for _ in range(3):
        response = httpx.post(
            limited.url + "/v1/completions",
            json=payload,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        codes.append(response.status_code)
    assert codes == [200, 200, 429]
    assert int(response.headers["retry-after"]) >= 1
    assert "rate limit" in response.json()["error"]["message"]


def test_client_disconnect_mid_stream_frees_the_session(
    gateway, token, swarm_client, local_swarm: LocalSwarm
):
    suffix = client_peer_suffix(swarm_client)
    metrics = gateway.app.state.metrics
    before = metrics.stops.labels("/v1/completions", "cancelled")._value.get()
    body = {
        "model": swarm_client.model_name,
        "prompt": "Once upon a time",
        "max_tokens": 200,
        "min_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        gateway.url + "/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
    assert all(line.startswith("data: ") or not line for line in received)
    # The gateway notices, cancels the generation and closes the inference session: every
    # server logs the close, long before 200 tokens could have been generated.
    poll(
        lambda: metrics.stops.labels("/v1/completions", "cancelled")._value.get() == before + 1,
        10,
        "the gateway to count the cancelled generation",
    )
    poll(
        lambda: all(o == c for o, c in inference_sessions(local_swarm, suffix).values()),
        10,
        "the servers to log the close of the gateway's session",
    )
    assert metrics.active.labels("/v1/completions")._value.get() == 0
    assert gateway.app.state.service.concurrency.running("tests") == 0


def test_metrics_and_openapi(gateway, oai):
    oai.chat.completions.create(model=_model(oai), messages=QUESTION, max_tokens=3)
    text = httpx.get(gateway.url + "/metrics").text
    assert 'petals_gateway_requests_total{code="200",route="/v1/chat/completions"}' in text
    assert 'petals_gateway_time_to_first_token_seconds_count{route="/v1/chat/completions"}' in text
    assert 'petals_gateway_tokens_per_second_count{route="/v1/chat/completions"}' in text
    assert 'petals_gateway_requests_total{code="401",route="/v1/chat/completions"}' in text
    schema = httpx.get(gateway.url + "/openapi.json").json()
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions", "/api/v1/generate"} <= set(
        schema["paths"]
    )
