"""nf4 and int8 blocks served on CPU (bitsandbytes' CPU backend) give the same greedy tokens as
the same quantization applied locally with petals' own ``quantize_module`` (what convert_block
calls), and the quantization is real: the quantized local model's logits differ from float32's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client.generation import stream_generate
from client.petals_model import open_distributed_model
from swarm.localswarm import LocalSwarm
from tests.conftest import assert_reaped

pytestmark = pytest.mark.swarm

QUESTION = "What is a block?"
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=["nf4", "int8"])
def quantized_swarm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[LocalSwarm]:
    quant = request.param
    swarm = LocalSwarm(
        model=str(tiny_model_dir),
        workdir=tmp_path_factory.mktemp(f"swarm-{quant}"),
        dht_prefix=f"tiny-{quant}",
        quant_type=quant,
    )
    pgids: list[int] = []
    try:
        swarm.start(num_servers=1)
        pgids = [p.pid for p in swarm.processes()]
        yield swarm
    finally:
        pgids += [p.pid for p in swarm.processes()]
        swarm.stop()
    assert_reaped(pgids)


def local_model(model_dir: Path, quant: str | None):
    """The tiny Llama run locally; with ``quant``, every decoder layer's linears are replaced the
    way a petals server does it (quantize_module, then .to(device) quantizes the weights).

    The new bitsandbytes modules stay in training mode, as on a server (petals never calls
    .eval() on served blocks). That matters on CPUs with avx512_bf16: there, an eval-mode
    Linear4bit repacks its weight for a bf16 kernel that needs out_features divisible by 32
    (the tiny model's 176-wide MLP is not) and computes differently."""
    import swarm.compat

    swarm.compat.apply()
    from petals.utils.convert_block import QuantType, quantize_module
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if quant:
        for i, layer in enumerate(model.model.layers):
            quantized = quantize_module(layer, quant_type=QuantType[quant.upper()])
            model.model.layers[i] = quantized.to("cpu")
    return model


def prompt_ids(model_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt"
    )
    return tokenizer, ids


def test_quantized_swarm_greedy_equals_local_quantized_blocks(
    quantized_swarm: LocalSwarm, tiny_model_dir: Path
):
    quant = quantized_swarm.quant_type
    tokenizer, ids = prompt_ids(tiny_model_dir)
    reference = local_model(tiny_model_dir, quant)
    expected = reference.generate(
        ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=2
    )[0, ids.shape[1] :].tolist()

    with open_distributed_model(quantized_swarm.settings()) as remote:
        result = stream_generate(remote, tokenizer, ids, max_new_tokens=NEW_TOKENS)
    assert result.token_ids == expected

    records = quantized_swarm.announcements()
    assert records and {r.quant_type for r in records} == {quant}


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_local_quantization_changes_the_numbers(tiny_model_dir: Path, quant: str):
    """Control: the reference above is not float32 in disguise."""
    import torch

    _, ids = prompt_ids(tiny_model_dir)
    with torch.inference_mode():
        plain = local_model(tiny_model_dir, None)(ids).logits
        quantized = local_model(tiny_model_dir, quant)(ids).logits
    assert not torch.equal(plain, quantized)
    assert (plain - quantized).abs().max().item() > 1e-4
