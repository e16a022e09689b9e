"""Tiny model run locally vs through a 2-server private swarm on 127.0.0.1, in one run.

Prints and writes bench/results/swarm.json: decode tokens/s locally and through the swarm, their
ratio, and time to first token of a fresh inference session (p50/p95 over N sessions).
Run: make bench  (or .venv/bin/python -m bench.swarm_throughput --sessions 20 --tokens 64)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import percentile, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="fresh sessions for TTFT")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per side")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from client.generation import stream_generate
    from client.petals_model import open_distributed_model
    from swarm.localswarm import LocalSwarm
    from swarm.models.tiny import ensure_tiny_llama

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    model_dir = ensure_tiny_llama(progress=say)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is a block?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    # min_new_tokens: measure a fixed number of tokens even where the answer would end early.
    kwargs = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}

    def speeds(lm) -> list[float]:  # type: ignore[no-untyped-def]
        return [
            stream_generate(lm, tokenizer, prompt, **kwargs).tokens_per_second or 0.0
            for _ in range(args.repeats)
        ]

    say("local model")
    local = AutoModelForCausalLM.from_pretrained(model_dir)
    stream_generate(local, tokenizer, prompt, max_new_tokens=4)  # warm-up
    local_speeds = speeds(local)

    with (
        tempfile.TemporaryDirectory() as workdir,
        LocalSwarm(model=str(model_dir), workdir=Path(workdir), progress=say) as swarm,
    ):
        swarm.start(2)
        with open_distributed_model(swarm.settings()) as remote:
            stream_generate(remote, tokenizer, prompt, max_new_tokens=4)  # warm-up: route found
            say("swarm throughput")
            swarm_speeds = speeds(remote)
            say(f"time to first token over {args.sessions} fresh sessions")
            ttfts = [
                stream_generate(remote, tokenizer, prompt, max_new_tokens=1).time_to_first_token_s
                or 0.0
                for _ in range(args.sessions)
            ]

    local_tps = statistics.median(local_speeds)
    swarm_tps = statistics.median(swarm_speeds)
    results = {
        "model": "tiny-llama (8 blocks, hidden 64, byte-level)",
        "servers": 2,
        "tokens_per_run": args.tokens,
        "local_tokens_per_s": round(local_tps, 1),
        "swarm_tokens_per_s": round(swarm_tps, 1),
        "swarm_to_local_ratio": round(swarm_tps / local_tps, 3),
        "fresh_session_ttft_p50_s": round(percentile(ttfts, 0.5), 3),
        "fresh_session_ttft_p95_s": round(percentile(ttfts, 0.95), 3),
        "sessions": args.sessions,
    }
    path = write_results("swarm", results)
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key.ljust(width)}  {value}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
