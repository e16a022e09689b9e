"""The tiny models' weights are the bytes recorded here, on any x86-64 CPU (one hopes: see below).

They are built in a child process pinned to CPU-independent code paths, in float64, rounded to
bfloat16 values (swarm/models/tiny.py). The hashes were recorded with torch 2.13.0 on an AVX-512
Xeon; builds with MKL held to SSE4.2 and to AVX-512 gave the same (bench/tiny_reproducibility.py).
If this fails on your machine, the build is not bit-identical there: report your CPU and torch
version. No other test depends on these exact weights: they compare the swarm with the same
model run locally, never with expected wording.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarm.models.tiny import FLAVOURS, ensure_tiny_llama, weights_sha256
from tests.conftest import REPO

pytestmark = pytest.mark.swarm

# "tiny" was recorded from one pinned build; the cross-ISA comparison ran for "tiny-llama3".
RECORDED_SHA256 = {
    "tiny": "1b00f3da318f8481fcf7ade3b72d1b360d40beb13852ddbe652896d36589e900",
    "tiny-llama3": "f2be171af5cebd409aecec371440fadcd0e44e11b9809029c768170a0b90d896",
}


def _model_dir(flavour: str, request: pytest.FixtureRequest) -> Path:
    if flavour == "tiny":
        return request.getfixturevalue("tiny_model_dir")  # the session's, built once
    cache = Path(os.environ.get("PETALS_KIT_CACHE") or REPO / ".cache") / "models"
    return ensure_tiny_llama(cache, FLAVOURS[flavour])


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def flavour_dir(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, _model_dir(request.param, request)


@pytest.mark.parametrize("flavour", sorted(RECORDED_SHA256))
def test_weights_hash_is_the_recorded_one(flavour: str, request: pytest.FixtureRequest) -> None:
    import torch

    digest = weights_sha256(_model_dir(flavour, request))
    assert digest == RECORDED_SHA256[flavour], (
        f"{flavour}: weights sha256 {digest} differs from the recorded one on this machine "
        f"(torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}): the tiny "
        "model's build is not bit-identical here"
    )


def test_weights_are_bfloat16_values(flavour_dir: tuple[str, Path]) -> None:
    import torch
    from safetensors.torch import load_file

    _, directory = flavour_dir
    for name, tensor in load_file(directory / "model.safetensors").items():
        assert tensor.dtype == torch.float32, name
        assert torch.equal(tensor.to(torch.bfloat16).to(torch.float32), tensor), name


def test_a_fresh_cache_gets_the_shipped_build_without_training(tmp_path: Path) -> None:
    from swarm.models.tiny import PREBUILT_DIR

    said: list[str] = []
    for flavour, spec in FLAVOURS.items():
        made = ensure_tiny_llama(tmp_path, spec, progress=said.append)
        assert made.parent == tmp_path and (PREBUILT_DIR / made.name).is_dir(), flavour
        assert weights_sha256(made) == RECORDED_SHA256[flavour]
    assert said and all(line.startswith("copying the shipped tiny model") for line in said), said


# MKL held to one instruction set, as another CPU would run it (bench/tiny_reproducibility.py).
ISAS = {
    "sse4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_the_pinned_build_does_not_depend_on_the_instruction_set(
    flavour: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped builds come from this pipeline: a short run of it (the same code, 12 training
    steps instead of hundreds) gives the same bytes whichever instruction set MKL may use."""
    from dataclasses import replace

    from swarm.models.tiny import make_tiny_llama

    short = replace(FLAVOURS[flavour], train_steps=12)
    digests = {}
    for isa, env in ISAS.items():
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        digests[isa] = weights_sha256(make_tiny_llama(tmp_path / isa, short))
    assert len(set(digests.values())) == 1, digests
