"""One command that checks the GPU runtime stack on a real device, ready for the day one is lent.

    python -m bench.gpu_check [--out FILE] [--no-swarm]      (or scripts/gpu-check)

With CUDA: records driver, compute capability and torch's arch list; converts 70B-shaped Llama
blocks (random weights, real shapes) to bf16, int8 and nf4 with petals' own convert_block and
compares the memory each takes with the planner's figure; times a one-token decode step per block
against the memory-bandwidth bound (bandwidth measured with a device copy); checks a 512-token
prefill plus 32 cached steps against a full prefill; runs the Llama-3.1 (llama3) rope path at
2048 tokens if swarm.compat offers it; starts a tiny LocalSwarm (its servers pick cuda:0), asks
it, stops it, and checks that no other process holds the GPU and no p2pd is left.
Without CUDA it runs the same checks on CPU with a small block shape and says what it skipped.

Prints a JSON summary and writes it to --out (default bench/results/gpu_check.json). Exit code 0
when every check that ran passed, 1 otherwise. A check that could not run is listed in "skipped"
with the reason, never counted as passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine

LLAMA_70B = {"hidden_size": 8192, "intermediate_size": 28672, "heads": 64, "kv_heads": 8}
# CPU mode: a small block (dimensions multiples of 64, like real ones) and a shorter prefill.
SMALL = {"hidden_size": 256, "intermediate_size": 768, "heads": 4, "kv_heads": 2}
QUANTS = ("bf16", "int8", "nf4")
ROPE_TOKENS = 2048
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _compat() -> None:
    import swarm.compat

    swarm.compat.apply()


class Report:
    """Collects results; a check that raises is recorded as failed with its error."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"checks": {}, "skipped": {}, "failed": {}}

    def run(self, name: str, check: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        try:
            result = check()
        except Exception as exc:
            self.data["failed"][name] = f"{type(exc).__name__}: {exc}"
            self.data["checks"][name] = {"traceback": traceback.format_exc(limit=6)}
            print(f"gpu-check: {name}: FAILED: {exc}", file=sys.stderr)
            return
        result["seconds"] = round(time.perf_counter() - started, 2)
        why = result.pop("why", "check reported not ok")
        self.data["checks"][name] = result
        if result.get("ok") is False:
            self.data["failed"][name] = why
        print(f"gpu-check: {name}: {'ok' if result.get('ok', True) else 'FAILED'}", file=sys.stderr)

    def skip(self, name: str, why: str) -> None:
        self.data["skipped"][name] = why
        print(f"gpu-check: {name}: skipped: {why}", file=sys.stderr)


# -- facts ---------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    import torch

    _compat()
    import bitsandbytes
    import hivemind
    import petals
    import transformers

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "petals": petals.__version__,
        "hivemind": hivemind.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }
    lib = getattr(getattr(bitsandbytes, "cextension", None), "lib", None)
    facts["bitsandbytes_library"] = getattr(getattr(lib, "_lib", None), "_name", None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts |= {
            "device": props.name,
            "device_memory_bytes": props.total_memory,
            "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(0)),
            "torch_arch_list": torch.cuda.get_arch_list(),
        }
        facts["arch_supported"] = f"sm_{props.major}{props.minor}" in facts["torch_arch_list"]
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            facts["driver"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
        facts["ok"] = facts["arch_supported"]
        facts["why"] = "torch was not built for this device's compute capability"
    return facts


# -- blocks --------------------------------------------------------------------------------------
def llama_config(shape: dict[str, int], max_positions: int, rope_scaling: Any = None) -> Any:
    _compat()
    from petals.models.llama.config import DistributedLlamaConfig

    return DistributedLlamaConfig(
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        num_hidden_layers=1,
        vocab_size=32000,
        max_position_embeddings=max_positions,
        rope_scaling=rope_scaling,
        torch_dtype="bfloat16",
    )


def random_block(config: Any, dtype: Any, seed: int = 0) -> Any:
    """petals' Llama block with random weights. Parameters start on the meta device (a 70B block
    initialised by nn.Linear would take a while), buffers such as the rope tables are built for
    real; then each parameter gets random values."""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device

    with init_empty_weights(include_buffers=False):
        block = config.block_class(config)
    generator = torch.Generator().manual_seed(seed)
    for name, param in list(block.named_parameters()):
        if "norm" in name:
            value = torch.ones(param.shape, dtype=dtype)
        else:
            value = torch.randn(param.shape, generator=generator, dtype=dtype) * 0.02
        set_module_tensor_to_device(block, name, "cpu", value=value)
    return block.to(dtype)


def convert(block: Any, config: Any, quant: str, device: Any) -> Any:
    from petals.utils.convert_block import QuantType, convert_block

    quant_type = {"bf16": QuantType.NONE, "int8": QuantType.INT8, "nf4": QuantType.NF4}[quant]
    return convert_block(block, 0, config, [device], device, quant_type)


def tensor_bytes(module: Any) -> int:
    """Storage of parameters, buffers and bitsandbytes quantization state (CPU measurement)."""
    import torch

    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for tensor in [*module.parameters(), *module.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        while state is not None:
            for value in vars(state).values():
                add(value)
            state = getattr(state, "state2", None)
        add(getattr(tensor, "SCB", None))
    return total


def block_memory(shape: dict[str, int], device: Any, dtype: Any) -> dict[str, Any]:
    """Each quant: memory one converted block takes, versus the planner's weight figure."""
    import torch

    from swarm.modelspecs import ModelSpec, block_bytes

    spec = ModelSpec(
        name="check",
        num_layers=80,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        vocab_size=32000,
        max_context=4096,
    )
    config = llama_config(shape, 4096)
    results: dict[str, Any] = {"shape": shape, "device": str(device)}
    for quant in QUANTS:
        block = random_block(config, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            converted = convert(block, config, quant, device)
            del block
            torch.cuda.synchronize()
            measured = torch.cuda.memory_allocated(device) - before
            how = "torch.cuda.memory_allocated delta"
        else:
            converted = convert(block, config, quant, device)
            measured = tensor_bytes(converted)
            how = "bytes of parameters, buffers and quantization state"
        planned = block_bytes(
            spec, quant, weight_dtype="bf16" if dtype == torch.bfloat16 else "fp32"
        )
        rope = rope_table_bytes(converted)
        results[quant] = {
            "measured_bytes": measured,
            "rope_table_bytes": rope,
            "planned_bytes": planned,
            "measured_over_planned": round(measured / planned, 4),
            "without_rope_over_planned": round((measured - rope) / planned, 4),
            "measured_by": how,
        }
        del converted
    ratios = [results[q]["without_rope_over_planned"] for q in QUANTS]
    results["ok"] = all(0.9 <= r <= 1.1 for r in ratios)
    results["why"] = f"a block's weights are off the planner's figure by more than 10%: {ratios}"
    return results


def rope_table_bytes(module: Any) -> int:
    """petals keeps rope cos/sin tables for every position up front; the planner's weight
    figure does not include them (a 1% overhead covers them at 4096 positions, not at 131072)."""
    return sum(
        b.numel() * b.element_size()
        for n, b in module.named_buffers()
        if n.rsplit(".", 1)[-1] in {"cos_cached", "sin_cached"}
    )


def copy_bandwidth(device: Any) -> float:
    """Bytes/s of a device-to-device copy (read + write), the practical bandwidth bound."""
    import torch

    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * size * 10 / (time.perf_counter() - started)


def decode_and_prefill(shape: dict[str, int], device: Any, dtype: Any) -> dict[str, Any]:
    """Per quant: prefill+cached steps equal a full prefill; one-token step time vs the bound."""
    import torch

    cuda = device.type == "cuda"
    prefill, cached_steps = (512, 32) if cuda else (64, 8)
    config = llama_config(shape, 4096)
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-4
    results: dict[str, Any] = {
        "device": str(device),
        "prefill_tokens": prefill,
        "cached_steps": cached_steps,
        "copy_bandwidth_bytes_per_s": bandwidth,
    }
    worst = 0.0
    for quant in QUANTS:
        torch.manual_seed(1)
        block = convert(random_block(config, dtype), config, quant, device)
        hidden = torch.randn(1, prefill + cached_steps, shape["hidden_size"], dtype=dtype) * 0.5
        hidden = hidden.to(device)
        with torch.inference_mode():
            full = block(hidden)[0]
            out, past = block(hidden[:, :prefill], use_cache=True)[:2]
            steps = []
            for i in range(prefill, prefill + cached_steps):
                step, past = block(hidden[:, i : i + 1], layer_past=past, use_cache=True)[:2]
                steps.append(step)
            cached = torch.cat([out, *steps], dim=1)
            error = ((cached - full).abs().max() / full.abs().max()).item()
            worst = max(worst, error)
            entry: dict[str, Any] = {"max_relative_error_vs_full_prefill": error}
            if device.type == "cuda":
                prefix = block(hidden[:, :prefill], use_cache=True)[1]
                one = hidden[:, prefill : prefill + 1]
                for _ in range(5):
                    block(one, layer_past=prefix, use_cache=True)
                times = []
                for _ in range(30):
                    torch.cuda.synchronize()
                    started = time.perf_counter()
                    block(one, layer_past=prefix, use_cache=True)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - started)
                weights = tensor_bytes(block) - rope_table_bytes(block)  # read once per step
                kv = 2 * shape["kv_heads"] * (shape["hidden_size"] // shape["heads"]) * prefill * 2
                bound = (weights + kv) / bandwidth if bandwidth else float("nan")
                step_s = statistics.median(times)
                entry |= {
                    "decode_step_s_median": step_s,
                    "bytes_read_bound": weights + kv,
                    "bandwidth_bound_s": bound,
                    "step_over_bound": round(step_s / bound, 2),
                }
        results[quant] = entry
        del block
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["ok"] = worst <= tolerance
    results["why"] = f"cached decoding differs from a full prefill: {worst:.3g} > {tolerance}"
    return results


def llama3_unavailable(shape: dict[str, int]) -> str | None:
    """Why the llama3 rope path cannot run here (None: it can). Another part of swarm.compat
    teaches transformers 4.34 rope_type llama3; without it, LlamaConfig rejects the config."""
    try:
        config = llama_config(shape, 131072, rope_scaling=dict(LLAMA3_ROPE))
        with __import__("accelerate").init_empty_weights(include_buffers=False):
            config.block_class(config)
    except Exception as exc:
        return f"swarm.compat does not offer llama3 rope ({type(exc).__name__}: {exc})"
    return None


def llama3_rope(shape: dict[str, int], device: Any, dtype: Any) -> dict[str, Any]:
    """The Llama-3.1 rope path at 2048 tokens: finite, and cached decoding equals a prefill."""
    import torch

    config = llama_config(shape, 131072, rope_scaling=dict(LLAMA3_ROPE))
    block = convert(random_block(config, dtype), config, "bf16", device)
    rope_bytes = rope_table_bytes(block)
    hidden = (torch.randn(1, ROPE_TOKENS, shape["hidden_size"], dtype=dtype) * 0.5).to(device)
    with torch.inference_mode():
        full = block(hidden)[0]
        out, past = block(hidden[:, : ROPE_TOKENS - 8], use_cache=True)[:2]
        steps = [out]
        for i in range(ROPE_TOKENS - 8, ROPE_TOKENS):
            step, past = block(hidden[:, i : i + 1], layer_past=past, use_cache=True)[:2]
            steps.append(step)
        error = ((torch.cat(steps, dim=1) - full).abs().max() / full.abs().max()).item()
    tolerance = 5e-2 if dtype == torch.bfloat16 else 1e-4
    return {
        "tokens": ROPE_TOKENS,
        "rope_table_bytes": rope_bytes,
        "finite": bool(torch.isfinite(full).all()),
        "max_relative_error_cached_vs_full": error,
        "ok": bool(torch.isfinite(full).all()) and error <= tolerance,
        "why": f"llama3 rope path: non-finite output or cached/full mismatch ({error:.3g})",
    }


# -- a tiny swarm --------------------------------------------------------------------------------
def gpu_pids() -> set[int]:
    """Processes holding a GPU: an open /dev/nvidiaN file (works in a container's own PID
    namespace, where nvidia-smi may list nothing), plus whatever nvidia-smi lists."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(t.startswith("/dev/nvidia") and t[len("/dev/nvidia") :].isdigit() for t in targets):
            pids.add(int(entry.name))
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"]
        out = subprocess.run(query, capture_output=True, text=True).stdout
        pids |= {int(line) for line in out.split() if line.strip().isdigit()}
    return pids


def p2pd_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "p2pd"]


def tiny_swarm(cuda: bool) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from client.generation import stream_generate
    from client.petals_model import open_distributed_model
    from swarm.localswarm import LocalSwarm
    from swarm.models.tiny import ensure_tiny_llama

    cache = Path(os.environ.get("PETALS_KIT_CACHE") or Path(__file__).parents[1] / ".cache")
    model_dir = ensure_tiny_llama(cache / "models")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is a block?"}], add_generation_prompt=True,
        return_tensors="pt",
    )  # fmt: skip
    p2pd_before = set(p2pd_pids())
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-swarm-") as workdir:
        swarm = LocalSwarm(model=str(model_dir), workdir=Path(workdir), dht_prefix="gpucheck")
        try:
            swarm.start(num_servers=1)
            server_pids = {p.pid for p in swarm.processes()}
            result["server_processes_on_gpu"] = sorted(gpu_pids() - {os.getpid()})
            with open_distributed_model(swarm.settings()) as remote:
                answer = stream_generate(remote, tokenizer, ids, max_new_tokens=8)
            result["answer_tokens"] = len(answer.token_ids)
        finally:
            swarm.stop()
    result["gpu_processes_after_stop"] = sorted(gpu_pids() - {os.getpid()})
    result["p2pd_left"] = sorted(set(p2pd_pids()) - p2pd_before)
    result["ok"] = (
        result.get("answer_tokens", 0) > 0
        and not result["gpu_processes_after_stop"]
        and not result["p2pd_left"]
        and (not cuda or bool(result.get("server_processes_on_gpu")))
    )
    result["why"] = "the swarm did not answer, left processes behind, or did not use the GPU"
    result["server_pids"] = sorted(server_pids)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    parser.add_argument("--no-swarm", action="store_true", help="skip the tiny LocalSwarm part")
    args = parser.parse_args(argv)

    import torch

    report = Report()
    started = time.perf_counter()
    report.run("environment", environment)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = LLAMA_70B if cuda else SMALL
    if not cuda:
        report.skip("cuda", "no CUDA device: blocks ran on CPU with a small shape, float32")
        report.skip("decode_timing", "needs CUDA (bandwidth bound and step timing)")
        report.skip("llama_70b_shape", "needs CUDA (a 70B block per quant on a GPU)")
    report.run("block_memory", lambda: block_memory(shape, device, dtype))
    report.run("prefill_vs_cached", lambda: decode_and_prefill(shape, device, dtype))
    why_not = llama3_unavailable(shape)
    if why_not:
        report.skip("llama3_rope", why_not)
    else:
        report.run("llama3_rope", lambda: llama3_rope(shape, device, dtype))
    if args.no_swarm:
        report.skip("tiny_swarm", "--no-swarm")
    else:
        report.run("tiny_swarm", lambda: tiny_swarm(cuda))

    summary = {
        "machine": machine(),
        **report.data,
        "ok": not report.data["failed"],
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(summary, indent=2, default=str)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
