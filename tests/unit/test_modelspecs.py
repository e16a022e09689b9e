import json
from pathlib import Path

import pytest

from swarm.errors import ModelError
from swarm.modelspecs import (
    KNOWN_MODELS,
    ModelSpec,
    attention_cache_bytes_per_token_per_block,
    block_bytes,
    lookup,
    params_per_block,
    rope_table_bytes_per_block,
    rope_table_positions,
    spec_from_config,
    spec_from_model_dir,
)

pytestmark = pytest.mark.unit

GiB = 1024**3

TINY_CONFIG = {
    "model_type": "llama",
    "num_hidden_layers": 8,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}


def test_70b_block_has_the_known_parameter_count() -> None:
    # q,o: 8192^2 each; k,v: 8192*1024 each; MLP: 3*8192*28672; norms: 2*8192.
    assert params_per_block(lookup("petals-team/StableBeluga2")) == 855_654_400


@pytest.mark.parametrize("spec", KNOWN_MODELS, ids=lambda s: s.name)
@pytest.mark.parametrize(("quant", "guide_gib"), [("bf16", 1.61), ("int8", 0.80), ("nf4", 0.43)])
def test_block_bytes_agree_with_the_runtime_guide(spec: ModelSpec, quant: str, guide_gib: float):
    assert block_bytes(spec, quant) / GiB == pytest.approx(guide_gib, rel=0.05)


def test_quantized_blocks_are_smaller() -> None:
    spec = lookup("meta-llama/Llama-2-70b-hf")
    assert block_bytes(spec, "nf4") < block_bytes(spec, "int8") < block_bytes(spec, "bf16")
    assert block_bytes(spec, "bf16", weight_dtype="fp32") == pytest.approx(
        2 * block_bytes(spec, "bf16"), rel=1e-6
    )


def test_unknown_quant_is_refused() -> None:
    with pytest.raises(ModelError, match=r"quant='fp8'.*bf16, int8, nf4"):
        block_bytes(lookup("petals-team/StableBeluga2"), "fp8")


@pytest.mark.parametrize(
    ("config", "dtype", "expected"),
    [
        ({}, "bf16", 2 * 8 * 128 * 2),  # 70B: 8 KV heads of 128
        ({}, "fp32", 2 * 8 * 128 * 4),
        (TINY_CONFIG, "bf16", 2 * 2 * 16 * 2),  # tiny: 2 KV heads of 16
    ],
)
def test_attention_cache_counts_only_kv_heads(config: dict, dtype: str, expected: int) -> None:
    spec = spec_from_config(config) if config else lookup("petals-team/StableBeluga2")
    assert attention_cache_bytes_per_token_per_block(spec, dtype) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "canonical", "vocab", "context", "template"),
    [
        ("meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-70b-hf", 32000, 4096, "llama2"),
        ("META-LLAMA/llama-2-70b-CHAT-hf", "meta-llama/Llama-2-70b-hf", 32000, 4096, "llama2"),
        ("petals-team/StableBeluga2", "petals-team/StableBeluga2", 32000, 4096, "stablebeluga"),
        ("stabilityai/stablebeluga2", "petals-team/StableBeluga2", 32000, 4096, "stablebeluga"),
        (
            "meta-llama/Meta-Llama-3-70B-Instruct",
            "meta-llama/Meta-Llama-3-70B-Instruct",
            128256,
            8192,
            "llama3",
        ),
        (
            "meta-llama/Meta-Llama-3.1-70B-Instruct",
            "meta-llama/Meta-Llama-3.1-70B-Instruct",
            128256,
            131072,
            "llama3",
        ),
        (
            "meta-llama/Llama-3.1-70B-Instruct",
            "meta-llama/Meta-Llama-3.1-70B-Instruct",
            128256,
            131072,
            "llama3",
        ),
        (
            "meta-llama/Llama-3.3-70B-Instruct",
            "meta-llama/Llama-3.3-70B-Instruct",
            128256,
            131072,
            "llama3",
        ),
    ],
)
def test_lookup_known_names(
    name: str, canonical: str, vocab: int, context: int, template: str
) -> None:
    spec = lookup(name)
    assert (spec.name, spec.vocab_size, spec.max_context, spec.chat_template) == (
        canonical,
        vocab,
        context,
        template,
    )
    assert (spec.num_layers, spec.hidden_size, spec.num_key_value_heads) == (80, 8192, 8)


def test_lookup_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ModelError) as info:
        lookup("mistralai/Mixtral-8x7B")
    message = str(info.value)
    assert "petals-team/StableBeluga2" in message
    assert "config.json" in message


def _write_model_dir(path: Path, config: dict) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_local_model_dir_gives_the_tiny_spec(tmp_path: Path) -> None:
    directory = _write_model_dir(tmp_path / "tiny", TINY_CONFIG)
    for spec in (spec_from_model_dir(directory), lookup(str(directory))):
        assert spec.name == str(directory)
        assert (spec.num_layers, spec.hidden_size, spec.head_dim) == (8, 64, 16)
        assert spec.chat_template is None


def test_missing_kv_heads_means_plain_multi_head_attention() -> None:
    config = {k: v for k, v in TINY_CONFIG.items() if k != "num_key_value_heads"}
    assert spec_from_config(config).num_key_value_heads == 4


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p / "nowhere", "does not exist"),
        (lambda p: p, "has no config.json"),
        (lambda p: _write_bytes(p / "c", b"{not json"), "cannot read it as JSON"),
        (lambda p: _write_model_dir(p / "b", {**TINY_CONFIG, "model_type": "bloom"}), "bloom"),
        (lambda p: _write_model_dir(p / "k", {"model_type": "llama"}), "config.json has no 'num_"),
        (
            lambda p: _write_model_dir(p / "h", {**TINY_CONFIG, "num_key_value_heads": 3}),
            "not a multiple of num_key_value_heads=3",
        ),
        (lambda p: _write_model_dir(p / "z", {**TINY_CONFIG, "num_hidden_layers": 0}), "greater"),
    ],
)
def test_unusable_model_dirs_raise_model_error(tmp_path: Path, make, fragment: str) -> None:
    with pytest.raises(ModelError, match=fragment):
        spec_from_model_dir(make(tmp_path))


def _write_bytes(path: Path, data: bytes) -> Path:
    path.mkdir()
    (path / "config.json").write_bytes(data)
    return path


LLAMA31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


@pytest.mark.parametrize(
    "name", ["meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"]
)
def test_llama31_and_33_use_llama3_rope_and_the_llama3_chat_template(name: str) -> None:
    from client.templates import detect_style

    spec = lookup(name)
    assert spec.rope_type == "llama3"
    assert detect_style(name, has_tokenizer_template=True) == "llama3"


@pytest.mark.parametrize(
    ("positions", "rows"),
    [(0, 256), (1, 256), (256, 256), (257, 512), (2048, 2048), (2049, 4096), (131072, 131072)],
)
def test_rope_tables_grow_in_powers_of_two(positions: int, rows: int) -> None:
    assert rope_table_positions(positions) == rows


def test_llama3_rope_tables_follow_the_session_length_not_the_model_maximum() -> None:
    spec = lookup("meta-llama/Llama-3.3-70B-Instruct")
    # cos + sin, fp32, head_dim 128: 1 KiB per position.
    assert rope_table_bytes_per_block(spec, 2048) == 2 * 2048 * 128 * 4 == 2 * 1024**2
    # What transformers would build up front: 128 MiB per block (the figure).
    assert rope_table_bytes_per_block(spec, 131072) == 128 * 1024**2


def test_default_rope_tables_are_built_at_full_length() -> None:
    spec = lookup("meta-llama/Meta-Llama-3-70B-Instruct")
    assert spec.rope_type == "default"
    assert rope_table_bytes_per_block(spec, 512) == 2 * 8192 * 128 * 4
    assert rope_table_bytes_per_block(spec, 10000) == 2 * 10000 * 128 * 4


def test_negative_positions_are_refused() -> None:
    with pytest.raises(ModelError, match="positions=-1"):
        rope_table_bytes_per_block(lookup("petals-team/StableBeluga2"), -1)


def test_config_rope_scaling_sets_the_rope_type() -> None:
    assert spec_from_config({**TINY_CONFIG, "rope_scaling": LLAMA31_ROPE}).rope_type == "llama3"
    linear = {"type": "linear", "factor": 2.0}
    assert spec_from_config({**TINY_CONFIG, "rope_scaling": linear}).rope_type == "linear"
    assert spec_from_config(TINY_CONFIG).rope_type == "default"
    with pytest.raises(ModelError, match="rope_scaling type 'yarn' is not supported"):
        spec_from_config({**TINY_CONFIG, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
