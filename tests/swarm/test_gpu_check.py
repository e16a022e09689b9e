"""bench/gpu_check.py in its CPU mode (no CUDA here): every CPU part runs and passes, the GPU
parts are listed as skipped with a reason, and the tiny swarm leaves no process behind. Keeps the
script from rotting until a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.swarm

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_mode(tmp_path: Path, tiny_model_dir: Path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PETALS_KIT_CACHE=str(tiny_model_dir.parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert json.loads(done.stdout) == summary, "stdout and the file should carry the same JSON"
    assert summary["ok"] is True and summary["failed"] == {}
    assert {"cuda", "decode_timing", "llama_70b_shape"} <= set(summary["skipped"])
    assert all(summary["skipped"].values()), "every skipped part says why"

    checks = summary["checks"]
    assert checks["environment"]["cuda_available"] is False
    pinned = (REPO / "constraints.txt").read_text()
    assert f"bitsandbytes=={checks['environment']['bitsandbytes']}\n" in pinned
    for quant in ("bf16", "int8", "nf4"):
        block = checks["block_memory"][quant]
        assert 0.9 <= block["without_rope_over_planned"] <= 1.1, block
        error = checks["prefill_vs_cached"][quant]["max_relative_error_vs_full_prefill"]
        assert error <= 1e-4
    # Quantization really shrinks the weights, in the order the planner assumes.
    weights = {
        q: checks["block_memory"][q]["measured_bytes"]
        - checks["block_memory"][q]["rope_table_bytes"]
        for q in ("bf16", "int8", "nf4")
    }
    assert weights["bf16"] > weights["int8"] > weights["nf4"]
    swarm = checks["tiny_swarm"]
    assert swarm["answer_tokens"] > 0
    assert swarm["p2pd_left"] == [] and swarm["gpu_processes_after_stop"] == []
    assert ("llama3_rope" in checks) != ("llama3_rope" in summary["skipped"])
