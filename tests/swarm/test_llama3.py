"""A Llama-3.1-shaped tiny model served by a private swarm matches a float64 reference.

The reference below is written from the published formulas (Meta's llama3 ``apply_scaling`` for
the rope frequencies, the Llama decoder block), not from transformers or swarm.compat_llama3, and
runs in float64 without a cache. The swarm runs the prompt (prefill), then 20 cached single-token
steps, choosing each next token greedily from its own logits. A control with plain rope shows the
comparison can fail.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm.localswarm import LocalSwarm
from tests.conftest import REPO, assert_reaped
from tests.stacks import run_showing_stacks

pytestmark = pytest.mark.swarm

CACHED_STEPS = 20
QUESTION = "What is a private swarm?"
# float32 servers against a float64 reference: logits agree to ~1e-5; allow 1e-3.
LOGITS_ATOL = 1e-3


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import os

    from swarm.models.tiny import LLAMA3_SPEC, ensure_tiny_llama

    cache = Path(os.environ.get("PETALS_KIT_CACHE") or REPO / ".cache") / "models"
    return ensure_tiny_llama(cache, LLAMA3_SPEC)


@pytest.fixture(scope="module")
def llama3_swarm(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    swarm = LocalSwarm(
        model=str(model_dir), workdir=tmp_path_factory.mktemp("llama3"), dht_prefix="tiny-llama3"
    )
    pgids: list[int] = []
    try:
        swarm.start(2)
        pgids += [p.pid for p in swarm.processes()]
        yield swarm
    finally:
        pgids += [p.pid for p in swarm.processes()]
        swarm.stop()
    assert_reaped(pgids)


# --- the float64 reference ---------------------------------------------------------------------


def plain_inv_freq(head_dim: int, theta: float) -> list[float]:
    return [1.0 / theta ** (i / head_dim) for i in range(0, head_dim, 2)]


def llama3_inv_freq(head_dim: int, theta: float, scaling: dict) -> list[float]:
    """Meta's ``apply_scaling`` (llama-models, Llama-3.1 reference code)."""
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    new_freqs = []
    for freq in plain_inv_freq(head_dim, theta):
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return new_freqs


def reference_logits(weights: dict, config: dict, ids: list[int], inv_freq: list[float]):
    """Logits at every position of ``ids``: a Llama forward pass in float64, no cache."""
    import torch

    w = {name: tensor.double() for name, tensor in weights.items()}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads
    eps = config["rms_norm_eps"]
    n = len(ids)

    def rms_norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    angles = torch.outer(torch.arange(n, dtype=torch.float64), torch.tensor(inv_freq).double())
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    causal = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)

    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(n, heads, head_dim).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(n, kv_heads, head_dim).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(n, kv_heads, head_dim).transpose(0, 1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k = k.repeat_interleave(heads // kv_heads, dim=0)
        v = v.repeat_interleave(heads // kv_heads, dim=0)
        scores = q @ k.transpose(1, 2) / math.sqrt(head_dim) + causal
        attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, heads * head_dim)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"])
        gate = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return rms_norm(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


# --- the swarm ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm_run(llama3_swarm: LocalSwarm, model_dir: Path):
    """Prompt ids, generated ids and the swarm's logits after the prefill and each cached step."""
    import torch
    from transformers import AutoTokenizer

    from client.petals_model import open_distributed_model

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True
    )
    generated: list[int] = []
    logits: list[torch.Tensor] = []
    with (
        open_distributed_model(llama3_swarm.settings()) as lm,
        torch.inference_mode(),
        lm.inference_session(max_length=len(prompt) + CACHED_STEPS + 1),
    ):
        step_input = torch.tensor([prompt])  # the prefill, then one token per cached step
        for _ in range(CACHED_STEPS + 1):
            last = lm(input_ids=step_input).logits[0, -1].double()
            logits.append(last)
            generated.append(int(last.argmax()))
            step_input = torch.tensor([[generated[-1]]])
    return prompt, generated, torch.stack(logits)


@pytest.fixture(scope="module")
def weights_and_config(model_dir: Path):
    import json

    from safetensors.torch import load_file

    config = json.loads((model_dir / "config.json").read_text())
    return load_file(model_dir / "model.safetensors"), config


def test_tiny_llama3_is_shaped_like_llama31(weights_and_config, model_dir: Path) -> None:
    _, config = weights_and_config
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["num_key_value_heads"] < config["num_attention_heads"], "GQA"
    assert (model_dir / "tokenizer.json").is_file()
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    plain = plain_inv_freq(head_dim, config["rope_theta"])
    scaled = llama3_inv_freq(head_dim, config["rope_theta"], config["rope_scaling"])
    factor = config["rope_scaling"]["factor"]
    kept = [s == p for s, p in zip(scaled, plain, strict=True)]
    divided = [
        math.isclose(s, p / factor, rel_tol=1e-12) for s, p in zip(scaled, plain, strict=True)
    ]
    blended = [not (a or b) for a, b in zip(kept, divided, strict=True)]
    assert any(kept) and any(divided) and any(blended), "all three frequency bands are used"


def test_swarm_matches_the_float64_llama3_reference(swarm_run, weights_and_config) -> None:
    import torch

    prompt, generated, swarm_logits = swarm_run
    weights, config = weights_and_config
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    inv_freq = llama3_inv_freq(head_dim, config["rope_theta"], config["rope_scaling"])
    full = reference_logits(weights, config, prompt + generated[:-1], inv_freq)
    expected = full[len(prompt) - 1 :]  # after the prompt, then after each generated token
    assert expected.shape == swarm_logits.shape == (CACHED_STEPS + 1, config["vocab_size"])
    worst = (swarm_logits - expected).abs().max().item()
    assert worst < LOGITS_ATOL, f"swarm logits differ from the reference by up to {worst:.2e}"
    assert generated == expected.argmax(-1).tolist()
    assert torch.equal(swarm_logits.argmax(-1), expected.argmax(-1))


def test_plain_rope_control_differs(swarm_run, weights_and_config) -> None:
    """The same reference with plain rope does not match, so the comparison above can fail."""
    prompt, generated, swarm_logits = swarm_run
    weights, config = weights_and_config
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    plain = plain_inv_freq(head_dim, config["rope_theta"])
    control = reference_logits(weights, config, prompt + generated[:-1], plain)[len(prompt) - 1 :]
    worst = (swarm_logits - control).abs().max().item()
    assert worst > 100 * LOGITS_ATOL, f"plain rope is within {worst:.2e} of the swarm's logits"


def test_demo_serves_tiny_llama3(model_dir: Path, tmp_path: Path) -> None:
    """`petalctl demo --model tiny-llama3` answers as the same model run locally does."""
    import os
    import sys

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tests.swarm.procs import new_marker_env, processes_with_marker, wait_for

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt"
    )
    with torch.inference_mode():
        out = LlamaForCausalLM.from_pretrained(model_dir).generate(
            ids, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id
        )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    marker, env = new_marker_env()
    env["PETALS_KIT_CACHE"] = os.environ.get("PETALS_KIT_CACHE") or str(REPO / ".cache")
    argv = ["demo", "--model", "tiny-llama3", "--prompt", QUESTION, "--max-new-tokens", "12"]
    demo = run_showing_stacks(
        [sys.executable, "-m", "petalctl.main", *argv, "--workdir", str(tmp_path / "w")],
        cwd=tmp_path,
        env=env,
        timeout=400,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "preparing the tiny-llama3 offline Llama" in demo.stderr
    answer = demo.stdout.split(f"> {QUESTION}\n", 1)[1]
    assert answer == expected + "\n"
    wait_for(lambda: processes_with_marker(marker) == [], 15, "every demo process to be gone")
