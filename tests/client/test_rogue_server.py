"""A rogue server with an untrusted identity, serving every block, is never on a route.

The rogue announces all eight blocks in one span (the route a latency-minded client would love:
one hop instead of two). While the kit's client answers a dozen requests, one-shot and in a
conversation, the rogue's log shows no inference or forward request at all; petals writes one
INFO line per request it serves. A control at the end proves that observable: a client allowed
to use only the rogue makes the rogue log its requests.
"""

from __future__ import annotations

import re

import pytest

from client import GenerationParams, SwarmClient
from client.generation import stream_generate
from client.petals_model import open_distributed_model
from swarm.launch import BlockRange

pytestmark = pytest.mark.swarm

SERVED = re.compile(r"rpc_(inference|forward|backward|push)")


def served_requests(swarm, name: str) -> int:
    return len(SERVED.findall((swarm.workdir / f"{name}.log").read_text(errors="replace")))


def test_an_untrusted_server_serves_nothing(swarm_factory):
    swarm = swarm_factory(num_servers=2, dht_prefix="tiny-rogue")
    rogue = swarm.add_server(BlockRange(0, 8), name="rogue", trusted=False)
    swarm.wait_until_served(servers=[rogue], timeout=180)
    assert rogue.identity.peer_id not in swarm.trusted_peer_ids
    assert served_requests(swarm, "rogue") == 0

    answers = []
    with SwarmClient(swarm.settings()) as client:
        params = GenerationParams(max_new_tokens=12)
        for i in range(8):
            answers.append(client.generate(f"Question {i}: what is a block?", params).text)
        with client.conversation("Be brief.") as chat:
            for question in ("Hello!", "What is a block?", "Who runs the servers?", "Thanks!"):
                answers.append(chat.send(question, params).text())
    assert len(answers) == 12 and all(answers)
    trusted = [h.name for h in swarm.servers if h.trusted]
    assert all(served_requests(swarm, name) >= 12 for name in trusted)
    assert served_requests(swarm, "rogue") == 0

    # Control: the same observable does count requests when the rogue IS allowed.
    rogue_only = swarm.settings(trusted_servers=[rogue.identity.peer_id])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(swarm.model)
    with open_distributed_model(rogue_only, show_route=False) as model:
        ids = tokenizer("The swarm", return_tensors="pt").input_ids
        stream_generate(model, tokenizer, ids, max_new_tokens=4)
    assert served_requests(swarm, "rogue") > 0
