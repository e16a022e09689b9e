"""Llama-3.1/3.3 rope ("llama3" rope_scaling) for transformers 4.34.1 and petals 2.2.0.post1.

Applied by ``swarm.compat.apply()``, so servers and clients get it wherever petals can import.

Why it exists: Llama-3.1 and 3.3 ship ``rope_scaling = {"rope_type": "llama3", "factor",
"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}``. transformers 4.34.1
(the newest petals 2.2 allows) rejects that dict in ``LlamaConfig._rope_scaling_validation`` and
its ``LlamaAttention._init_rope`` knows only "linear" and "dynamic". Petals' server block
(``petals/models/llama/block.py``, ``OptimizedLlamaAttention``) inherits ``_init_rope`` and only
calls ``self.rotary_emb(x, seq_len=kv_seq_len)``, then slices the returned cos/sin tables; so a
rotary embedding with the llama3 frequencies, installed by ``_init_rope``, serves the model.

Patched (the only two transformers internals this module depends on):
- ``LlamaConfig._rope_scaling_validation``: llama3 dicts are checked here; anything else still
  goes to the original (which accepts only ``{"type": "linear"|"dynamic", "factor": float}``).
- ``LlamaAttention._init_rope``: llama3 configs get ``Llama3RotaryEmbedding``; others unchanged.

The tables are grown on demand (``swarm.modelspecs.rope_table_positions``) instead of
transformers' ``max_position_embeddings`` rows up front: at 131072 positions that would be
128 MiB of fp32 cos/sin per block. They are computed in float64 and stored in float32, so a row's
values do not depend on how long the table is when it is (re)built.

When it can go: when petals runs on a transformers release that implements rope_type "llama3".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from swarm.modelspecs import rope_table_positions

ROPE_TYPE = "llama3"
_SCALING_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)

_applied = False


def is_llama3_scaling(rope_scaling: Any) -> bool:
    """True for a Llama-3.1-style rope_scaling dict (``rope_type`` or legacy ``type`` "llama3")."""
    if not isinstance(rope_scaling, Mapping):
        return False
    return ROPE_TYPE in (rope_scaling.get("rope_type"), rope_scaling.get("type"))


def validate_llama3_scaling(rope_scaling: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field when a llama3 rope_scaling dict cannot be used."""
    missing = [key for key in _SCALING_KEYS if key not in rope_scaling]
    if missing:
        raise ValueError(
            f"rope_scaling (rope_type 'llama3') lacks {', '.join(missing)}; "
            f"it needs {', '.join(_SCALING_KEYS)}, got {dict(rope_scaling)}"
        )
    for key in _SCALING_KEYS:
        value = rope_scaling[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"rope_scaling.{key} = {value!r}: must be a number > 0")
    if rope_scaling["factor"] < 1:
        raise ValueError(f"rope_scaling.factor = {rope_scaling['factor']!r}: must be >= 1")
    if rope_scaling["high_freq_factor"] <= rope_scaling["low_freq_factor"]:
        raise ValueError(
            f"rope_scaling.high_freq_factor = {rope_scaling['high_freq_factor']!r}: must be "
            f"greater than low_freq_factor = {rope_scaling['low_freq_factor']!r}"
        )


def llama3_inv_freq(head_dim: int, theta: float, rope_scaling: Mapping[str, Any]) -> list[float]:
    """Llama-3.1's rotary inverse frequencies (Meta's ``apply_scaling``), in float64.

    Wavelengths shorter than original_max / high_freq_factor keep their frequency; longer than
    original_max / low_freq_factor are divided by ``factor``; in between, a linear blend.
    """
    validate_llama3_scaling(rope_scaling)
    factor = float(rope_scaling["factor"])
    low = float(rope_scaling["low_freq_factor"])
    high = float(rope_scaling["high_freq_factor"])
    old_context = float(rope_scaling["original_max_position_embeddings"])
    result = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / (theta ** (i / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            result.append(freq)
        elif wavelen > old_context / low:
            result.append(freq / factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            result.append((1 - smooth) * freq / factor + smooth * freq)
    return result


def _rotary_class() -> type:
    import torch
    from torch import nn

    class Llama3RotaryEmbedding(nn.Module):
        """What ``LlamaRotaryEmbedding`` returns (cos, sin of shape [1, 1, seq_len, head_dim]),
        with llama3 frequencies and tables grown on demand."""

        def __init__(self, dim: int, base: float, rope_scaling: Mapping[str, Any]) -> None:
            super().__init__()
            self.dim = dim
            inv_freq = torch.tensor(llama3_inv_freq(dim, base, rope_scaling), dtype=torch.float64)
            self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
            self._inv_freq64 = inv_freq
            self.max_seq_len_cached = 0
            self.register_buffer("cos_cached", torch.empty(1, 1, 0, dim), persistent=False)
            self.register_buffer("sin_cached", torch.empty(1, 1, 0, dim), persistent=False)

        def _grow(self, seq_len: int, device: torch.device) -> None:
            rows = rope_table_positions(seq_len)
            t = torch.arange(rows, dtype=torch.float64)
            freqs = torch.outer(t, self._inv_freq64)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.cos_cached = emb.cos()[None, None].to(device=device, dtype=torch.float32)
            self.sin_cached = emb.sin()[None, None].to(device=device, dtype=torch.float32)
            self.max_seq_len_cached = rows

        def forward(self, x: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
            if seq_len > self.max_seq_len_cached or self.cos_cached.device != x.device:
                self._grow(max(seq_len, self.max_seq_len_cached), x.device)
            return (
                self.cos_cached[:, :, :seq_len].to(dtype=x.dtype),
                self.sin_cached[:, :, :seq_len].to(dtype=x.dtype),
            )

    return Llama3RotaryEmbedding


def apply() -> None:
    """Patch transformers' Llama config validation and rope setup for rope_type "llama3"."""
    global _applied, Llama3RotaryEmbedding
    if _applied:
        return
    from transformers.models.llama import configuration_llama, modeling_llama

    Llama3RotaryEmbedding = _rotary_class()
    config_class = configuration_llama.LlamaConfig
    attention_class = modeling_llama.LlamaAttention
    original_validation = config_class._rope_scaling_validation
    original_init_rope = attention_class._init_rope

    def _rope_scaling_validation(self: Any) -> None:
        if is_llama3_scaling(self.rope_scaling):
            validate_llama3_scaling(self.rope_scaling)
        else:
            original_validation(self)

    def _init_rope(self: Any) -> None:
        if is_llama3_scaling(self.config.rope_scaling):
            self.rotary_emb = Llama3RotaryEmbedding(
                self.head_dim, base=self.rope_theta, rope_scaling=self.config.rope_scaling
            )
        else:
            original_init_rope(self)

    config_class._rope_scaling_validation = _rope_scaling_validation
    attention_class._init_rope = _init_rope
    _applied = True


Llama3RotaryEmbedding: Any = None  # the nn.Module class, defined by apply() (it needs torch)
