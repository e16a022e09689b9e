"""The SSE framing of the OpenAI routes, fed by a stand-in generation (the swarm is not the
thing under test here; tests/client/test_gateway.py streams from the real one): keep-alive
comments while the first token is awaited, and an error after the status line becomes an
error event followed by ``[DONE]``."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from client.gateway.errors import APIError
from client.gateway.openai_api import _event_stream
from client.gateway.service import Outcome

pytestmark = pytest.mark.unit


class Generation:
    """``deltas()`` as GatewayService has it: waits for the first token (queued), yields some,
    then fails the way it is told to."""

    def __init__(self, failure: BaseException) -> None:
        self.settings = SimpleNamespace(keepalive_s=0.01)
        self.failure = failure
        self.closed = False

    async def deltas(self, route, prepared, admission, outcome):
        try:
            await asyncio.sleep(0.2)  # twenty keep-alive periods before the first token
            yield "Hel"
            yield "lo"
            raise self.failure
        finally:
            self.closed = True


def chunk(text, reason):
    return None if text is None else {"choices": [{"text": text, "finish_reason": reason}]}


async def events(generation: Generation) -> list[str]:
    stream = _event_stream(generation, "/v1/completions", None, None, Outcome(), chunk, False)
    return [event async for event in stream]


@pytest.mark.parametrize(
    ("failure", "status"),
    [(APIError(503, "the swarm went away", code="swarm_unavailable"), 503), (KeyError("x"), 500)],
)
def test_keepalive_then_tokens_then_error_event_then_done(failure, status):
    generation = Generation(failure)
    out = asyncio.run(events(generation))
    first_data = next(i for i, e in enumerate(out) if e.startswith("data: "))
    assert first_data > 0 and all(e == ": keep-alive\n\n" for e in out[:first_data])
    data = [json.loads(e[6:]) for e in out if e.startswith("data: {")]
    assert [d["choices"][0]["text"] for d in data[:2]] == ["Hel", "lo"]
    error = data[-1]["error"]
    assert error["type"] == ("service_unavailable" if status == 503 else "server_error")
    assert "Traceback" not in error["message"]
    assert out[-1] == "data: [DONE]\n\n"
    assert generation.closed
