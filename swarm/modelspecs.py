"""Facts about the models the kit serves, and the per-block sizes the planner budgets with.

Sizes follow the formula Petals' server uses to decide how many blocks fit (petals 2.2,
``server/block_utils.py`` and ``Server._choose_num_blocks``): parameters of one transformer block
times bytes per parameter, plus 1% for tensor metadata and quantization tables.
For Llama-2-70B that gives ~1.61 GiB (bf16), ~0.80 GiB (int8) and ~0.43 GiB (nf4) per block.
Rope cos/sin tables come on top (``rope_table_bytes_per_block``): transformers builds them at
full length per block, the kit's llama3 rope (``swarm.compat_llama3``) grows them on demand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarm.errors import ModelError

Quant = Literal["bf16", "int8", "nf4"]
CacheDtype = Literal["bf16", "fp16", "fp32"]
ChatTemplate = Literal["llama2", "stablebeluga", "llama3"]
RopeType = Literal["default", "linear", "dynamic", "llama3"]

QUANTS: tuple[str, ...] = get_args(Quant)

# Bytes per weight. int8 is bitsandbytes LLM.int8 (one byte plus per-row scales, inside the 1%);
# nf4 is 4-bit values plus per-64-value scaling constants: petals measured 4.25 bits per weight.
BYTES_PER_PARAM: Mapping[str, float] = {"bf16": 2.0, "int8": 1.0, "nf4": 4.25 / 8}
# Petals adds 1% to every block estimate for tensor descriptors and quantization tables.
BLOCK_OVERHEAD = 0.01
CACHE_DTYPE_BYTES: Mapping[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}
# The kit's llama3 rope tables start at this many rows and double when a longer sequence comes.
ROPE_TABLE_MIN_POSITIONS = 256
ROPE_TABLE_BYTES_PER_VALUE = 4  # cos and sin are kept in fp32 whatever the block's dtype


class ModelSpec(BaseModel):
    """The shape of a Llama-class model, as far as serving its transformer blocks is concerned."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Hugging Face repo id, or the local directory it was read from")
    aliases: tuple[str, ...] = Field(default=(), description="other names for the same weights")
    num_layers: int = Field(gt=0, description="transformer blocks (num_hidden_layers)")
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0, description="width of the MLP")
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0, description="fewer than the heads means GQA")
    vocab_size: int = Field(gt=0)
    max_context: int = Field(gt=0, description="max_position_embeddings")
    chat_template: ChatTemplate | None = Field(
        default=None, description="prompt format family; None when read from an unknown config"
    )
    rope_type: RopeType = Field(
        default="default", description='rope_scaling\'s rope_type ("default": no scaling)'
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


_LLAMA_70B_SHAPE: dict[str, Any] = {
    "num_layers": 80,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
}

KNOWN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="meta-llama/Llama-2-70b-hf",
        aliases=("meta-llama/Llama-2-70b-chat-hf",),
        vocab_size=32000,
        max_context=4096,
        chat_template="llama2",
        **_LLAMA_70B_SHAPE,
    ),
    ModelSpec(
        name="petals-team/StableBeluga2",
        aliases=("stabilityai/StableBeluga2",),
        vocab_size=32000,
        max_context=4096,
        chat_template="stablebeluga",
        **_LLAMA_70B_SHAPE,
    ),
    ModelSpec(
        name="meta-llama/Meta-Llama-3-70B-Instruct",
        vocab_size=128256,
        max_context=8192,
        chat_template="llama3",
        **_LLAMA_70B_SHAPE,
    ),
    ModelSpec(
        name="meta-llama/Meta-Llama-3.1-70B-Instruct",
        aliases=("meta-llama/Llama-3.1-70B-Instruct",),  # the repo's name since HF renamed it
        vocab_size=128256,
        max_context=131072,
        chat_template="llama3",
        rope_type="llama3",
        **_LLAMA_70B_SHAPE,
    ),
    ModelSpec(
        name="meta-llama/Llama-3.3-70B-Instruct",
        vocab_size=128256,
        max_context=131072,
        chat_template="llama3",
        rope_type="llama3",
        **_LLAMA_70B_SHAPE,
    ),
)


def known_names() -> tuple[str, ...]:
    return tuple(name for spec in KNOWN_MODELS for name in spec.names)


def params_per_block(spec: ModelSpec) -> int:
    """Weights in one Llama decoder block: attention (GQA), gated MLP, two RMSNorm vectors."""
    h = spec.hidden_size
    kv_width = spec.num_key_value_heads * spec.head_dim
    attention = 2 * h * h + 2 * h * kv_width  # q and o are h x h; k and v are h x kv_width
    mlp = 3 * h * spec.intermediate_size  # gate, up, down
    norms = 2 * h
    return attention + mlp + norms


def _check_quant(quant: str) -> None:
    if quant not in BYTES_PER_PARAM:
        raise ModelError(f"quant={quant!r} is not supported (accepted: {', '.join(QUANTS)})")


def block_bytes(spec: ModelSpec, quant: str, *, weight_dtype: CacheDtype = "bf16") -> int:
    """Memory one block's weights take on a server, in bytes.

    ``weight_dtype`` only matters for unquantized blocks: "bf16" (the GPU default) or "fp32"
    (CPU-mode servers, which run float32).
    """
    _check_quant(quant)
    if quant == "bf16":
        per_param = float(CACHE_DTYPE_BYTES[weight_dtype])
    else:
        per_param = BYTES_PER_PARAM[quant]
    return round(params_per_block(spec) * per_param * (1 + BLOCK_OVERHEAD))


def attention_cache_bytes_per_token_per_block(spec: ModelSpec, dtype: CacheDtype = "bf16") -> int:
    """Keys and values of one token in one block. The cache is kept in the compute dtype (bf16
    for quantized blocks too), and with GQA only the KV heads are cached."""
    if dtype not in CACHE_DTYPE_BYTES:
        accepted = ", ".join(CACHE_DTYPE_BYTES)
        raise ModelError(f"cache dtype={dtype!r} is not supported (accepted: {accepted})")
    return 2 * spec.num_key_value_heads * spec.head_dim * CACHE_DTYPE_BYTES[dtype]


def rope_table_positions(positions: int) -> int:
    """Rows of the kit's lazily grown llama3 rope tables once a sequence of ``positions`` tokens
    has been seen: the next power of two, at least ROPE_TABLE_MIN_POSITIONS."""
    if positions < 0:
        raise ModelError(f"positions={positions}: must be >= 0")
    return max(ROPE_TABLE_MIN_POSITIONS, 1 << max(positions - 1, 0).bit_length())


def rope_table_bytes_per_block(spec: ModelSpec, positions: int) -> int:
    """Bytes of rope cos/sin tables one server block holds when its sessions reach ``positions``
    tokens (the longest max_length it admits).

    Each block has its own rotary embedding with two fp32 tables of rows x head_dim. For
    rope_type "llama3" (``swarm.compat_llama3``) the rows grow on demand
    (``rope_table_positions``); transformers' own rope ("default", "linear", "dynamic") builds
    max_position_embeddings rows when the block is made and more if a longer sequence comes.
    """
    if positions < 0:
        raise ModelError(f"positions={positions}: must be >= 0")
    if spec.rope_type == "llama3":
        rows = rope_table_positions(positions)
    else:
        rows = max(spec.max_context, positions)
    return 2 * rows * spec.head_dim * ROPE_TABLE_BYTES_PER_VALUE


def _rope_type(config: Mapping[str, Any], name: str) -> RopeType:
    scaling = config.get("rope_scaling")
    if scaling is None:
        return "default"
    if not isinstance(scaling, Mapping):
        raise ModelError(f"{name}: config.json rope_scaling={scaling!r} is not an object")
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind not in get_args(RopeType):
        raise ModelError(
            f"{name}: config.json rope_scaling type {kind!r} is not supported "
            f"(accepted: {', '.join(get_args(RopeType))})"
        )
    return cast(RopeType, kind)


def spec_from_config(config: Mapping[str, Any], name: str = "<config.json>") -> ModelSpec:
    """Build a spec from a Hugging Face ``config.json`` dict (Llama-class models only)."""
    model_type = config.get("model_type")
    if model_type != "llama":
        raise ModelError(
            f"{name}: config.json model_type={model_type!r} is not supported "
            "(the planner knows Llama-class models: model_type 'llama')"
        )
    try:
        heads = config["num_attention_heads"]
        return ModelSpec(
            name=name,
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            vocab_size=config["vocab_size"],
            max_context=config.get("max_position_embeddings", 2048),
            rope_type=_rope_type(config, name),
        )
    except KeyError as exc:
        raise ModelError(f"{name}: config.json has no {exc.args[0]!r}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise ModelError(f"{name}: config.json is not a usable Llama config ({problems})") from None


def spec_from_model_dir(path: str | Path) -> ModelSpec:
    """Read ``config.json`` from a local model directory (e.g. the tiny test model)."""
    directory = Path(path)
    if not directory.is_dir():
        raise ModelError(f"model directory {str(directory)!r} does not exist or is not a directory")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"model directory {str(directory)!r} has no config.json "
            "(expected a save_pretrained() directory)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: cannot read it as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    return spec_from_config(config, name=str(directory))


def lookup(name_or_dir: str) -> ModelSpec:
    """A known model by name or alias (case-insensitive), or a local directory with config.json.

    An existing directory wins over a known name, as with ``from_pretrained``: that is what a
    server given this argument would load.
    """
    if name_or_dir and Path(name_or_dir).is_dir():
        return spec_from_model_dir(name_or_dir)
    wanted = name_or_dir.strip().lower()
    for spec in KNOWN_MODELS:
        if wanted in (n.lower() for n in spec.names):
            return spec
    raise ModelError(
        f"unknown model {name_or_dir!r}: known models are {', '.join(known_names())}; "
        "a local model directory with a config.json also works"
    )
