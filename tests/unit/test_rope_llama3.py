"""Llama-3.1 rope in the compat layer: config validation, frequencies, lazily grown tables."""

from __future__ import annotations

import math

import pytest

import swarm.compat  # noqa: F401  (applies the llama3 rope patches, before petals imports)
from swarm.compat_llama3 import llama3_inv_freq

pytestmark = pytest.mark.unit

LLAMA31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


def _vectorized_reference(head_dim: int, theta: float, scaling: dict) -> list[float]:
    """The same formula written as transformers >= 4.43 does (torch.where over bands), float64."""
    import torch

    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    wavelen = 2 * math.pi / inv
    old = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return torch.where(medium, blended, scaled).tolist()


def test_llama31_frequencies_cover_three_bands_and_match_the_vectorized_formula() -> None:
    freqs = llama3_inv_freq(128, 500000.0, LLAMA31_ROPE)
    assert freqs == pytest.approx(_vectorized_reference(128, 500000.0, LLAMA31_ROPE), rel=1e-15)
    plain = [1.0 / 500000.0 ** (i / 128) for i in range(0, 128, 2)]
    kept = sum(f == p for f, p in zip(freqs, plain, strict=True))
    divided = sum(f == pytest.approx(p / 8, rel=1e-15) for f, p in zip(freqs, plain, strict=True))
    assert kept > 0 and divided > 0 and kept + divided < len(plain), "all three bands occur"


def test_llama3_rope_scaling_is_accepted_and_other_types_are_still_checked() -> None:
    from transformers import LlamaConfig

    assert LlamaConfig(rope_scaling=LLAMA31_ROPE).rope_scaling == LLAMA31_ROPE
    LlamaConfig(rope_scaling={"type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="lacks high_freq_factor"):
        LlamaConfig(rope_scaling={k: v for k, v in LLAMA31_ROPE.items() if k != "high_freq_factor"})
    with pytest.raises(ValueError, match=r"high_freq_factor = 1\.0: must be greater"):
        LlamaConfig(rope_scaling={**LLAMA31_ROPE, "high_freq_factor": 1.0})
    with pytest.raises(ValueError, match="factor = 'x': must be a number"):
        LlamaConfig(rope_scaling={**LLAMA31_ROPE, "factor": "x"})
    with pytest.raises(ValueError, match="type field must be one of"):
        LlamaConfig(rope_scaling={"type": "yarn", "factor": 2.0})


@pytest.fixture(scope="module")
def attention():
    from petals.models.llama.block import OptimizedLlamaAttention
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        rope_scaling={**LLAMA31_ROPE, "original_max_position_embeddings": 256},
    )
    return OptimizedLlamaAttention(config)


def test_petals_attention_gets_llama3_tables_grown_on_demand(attention) -> None:
    import torch

    rope = attention.rotary_emb
    assert rope.max_seq_len_cached == 0, "no table up front (not 131072 rows)"
    x = torch.zeros(1, 1, 300, 32)
    cos, sin = rope(x, seq_len=300)
    assert rope.max_seq_len_cached == 512 and cos.shape == (1, 1, 300, 32)
    inv = llama3_inv_freq(32, 10000.0, attention.config.rope_scaling)
    for pos in (0, 1, 17, 299):
        angles = [pos * f for f in inv] * 2
        expected_cos = torch.tensor([math.cos(a) for a in angles], dtype=torch.float32)
        expected_sin = torch.tensor([math.sin(a) for a in angles], dtype=torch.float32)
        assert torch.allclose(cos[0, 0, pos], expected_cos, rtol=0, atol=1e-6)
        assert torch.allclose(sin[0, 0, pos], expected_sin, rtol=0, atol=1e-6)
    before = cos.clone()
    grown, _ = rope(x, seq_len=1000)
    assert rope.max_seq_len_cached == 1024
    assert torch.equal(grown[:, :, :300], before), "growing keeps earlier rows bit-identical"
    assert rope(x.to(torch.bfloat16), seq_len=10)[0].dtype == torch.bfloat16


def test_plain_rope_is_left_to_transformers() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    rope = LlamaAttention(LlamaConfig(hidden_size=64, num_attention_heads=2)).rotary_emb
    assert type(rope) is LlamaRotaryEmbedding
