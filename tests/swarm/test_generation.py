"""Greedy generation through the private swarm equals the same model run locally."""

from __future__ import annotations

import pytest

from client.generation import stream_generate
from client.petals_model import open_distributed_model
from swarm.localswarm import LocalSwarm

pytestmark = pytest.mark.swarm

QUESTIONS = ["What is a block?", "Hello! Who runs the servers?"]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return tokenizer, model


@pytest.mark.parametrize("question", QUESTIONS)
def test_swarm_greedy_is_token_identical_to_local(local_swarm: LocalSwarm, reference, question):
    tokenizer, local_model = reference
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    expected = local_model.generate(
        ids, max_new_tokens=40, do_sample=False, pad_token_id=0, eos_token_id=2
    )[0, ids.shape[1] :].tolist()
    pieces: list[str] = []
    with open_distributed_model(local_swarm.settings()) as remote:
        result = stream_generate(remote, tokenizer, ids, max_new_tokens=40, on_text=pieces.append)
    assert result.token_ids == expected
    assert "".join(pieces) == tokenizer.decode(expected, skip_special_tokens=True)
    assert len(pieces) > 1, "the answer should arrive as several streamed pieces"
    assert result.time_to_first_token_s is not None and result.time_to_first_token_s > 0


def test_status_table_lists_both_trusted_servers(local_swarm: LocalSwarm):
    from swarm.coverage import render_status, servers_per_block

    records = local_swarm.announcements()
    assert {r.peer_id for r in records} == set(local_swarm.trusted_peer_ids)
    assert all(r.state == "online" for r in records)
    assert all(len(servers) == 1 for servers in servers_per_block(records, 8))
    table = render_status(records, 8, dht_prefix="tiny", trusted=local_swarm.trusted_peer_ids)
    assert "coverage: 8/8 blocks served" in table
    assert "blocks 0-7: 1 online server(s)" in table
