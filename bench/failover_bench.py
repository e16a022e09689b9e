"""What a crash costs, and how many conversations a server holds, on 127.0.0.1 with the tiny Llama.

1. Stall at failover: a replicated swarm (two servers per block range); during each answer the
   servers on its route are SIGKILLed after a few tokens; the stall is the gap between the last
   token before the crash and the first after the recovery (p50/p95 over --kills).
2. Conversations one server holds before a request waits: measured for the tiny model with a
   small attention cache (--cache-tokens), and computed for StableBeluga2 and Llama-3.1-70B with
   Petals' default cache, for full-window reservations (the kit before) and sized ones (now).
3. Aggregate tokens/s at 1, 8 and 32 concurrent streams through the replicated swarm.

Writes bench/results/failover.json.
Run: .venv/bin/python -m bench.failover_bench [--kills 10 --tokens 96]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import percentile, write_results

PROMPT = [{"role": "user", "content": "What is a block?"}]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def petals_default_cache_tokens(num_heads: int, num_kv_heads: int) -> int:
    """Petals' server default ``attn_cache_tokens`` (server/server.py): 16384 with GQA, or 4096."""
    return 16384 if num_kv_heads < num_heads else 4096


def computed_capacity(turn_tokens: int, quantum: int) -> list[dict[str, Any]]:
    from client.failover import round_up_reservation
    from swarm.modelspecs import lookup

    rows = []
    for name in ("petals-team/StableBeluga2", "meta-llama/Meta-Llama-3.1-70B-Instruct"):
        spec = lookup(name)
        cache = petals_default_cache_tokens(spec.num_attention_heads, spec.num_key_value_heads)
        sized = round_up_reservation(turn_tokens, quantum, spec.max_context)
        rows.append(
            {
                "model": name,
                "context_window": spec.max_context,
                "petals_default_attn_cache_tokens": cache,
                "full_window_conversations_per_server": cache // spec.max_context,
                "turn_tokens": turn_tokens,
                "sized_reservation_tokens": sized,
                "sized_conversations_per_server": cache // sized,
            }
        )
    return rows


def measure_stalls(client: Any, swarm: Any, kills: int, tokens: int) -> dict[str, Any]:
    from client import GenerationParams

    params = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens)
    reference = client.generate(PROMPT, params).text
    stalls, gaps, identical = [], [], 0
    for round_no in range(kills):
        arrivals, pieces = [], []
        stream = client.stream(PROMPT, params)
        for index, delta in enumerate(stream):
            arrivals.append(time.perf_counter())
            pieces.append(delta)
            if index == 7:
                used = {
                    str(span.span.peer_id)
                    for session in list(client._sessions)
                    for span in (getattr(session._session, "_server_sessions", None) or ())
                }
                for handle in swarm.servers:
                    if handle.identity.peer_id in used:
                        swarm.kill_server(handle)
        stats = stream.result
        identical += "".join(pieces) == reference
        stalls.extend(stats.stall_s)
        gaps.append(max(b - a for a, b in itertools.pairwise(arrivals)))
        say(f"kill {round_no + 1}/{kills}: stall {[round(s, 2) for s in stats.stall_s]}")
        restarted = [h for h in swarm.servers if not h.process.is_running()]
        for handle in restarted:
            swarm.restart_server(handle)
        wait_readmitted(client, swarm, {h.identity.peer_id for h in restarted})
    return {
        "kills": kills,
        "answers_identical_to_uninterrupted": identical,
        "recoveries": len(stalls),
        "stall_s_p50": percentile(stalls, 0.5),
        "stall_s_p95": percentile(stalls, 0.95),
        "largest_gap_between_deltas_s_p50": percentile(gaps, 0.5),
        "largest_gap_between_deltas_s_p95": percentile(gaps, 0.95),
        "stalls_s": stalls,
    }


def wait_readmitted(client: Any, swarm: Any, peers: set[str], timeout: float = 180.0) -> None:
    """Until the restarted ``peers`` are off the client's quarantine and announce ONLINE (a
    restarted server announces JOINING first: killing its replica before then leaves a range
    with no server, which is the no-replica-left case, not a failover)."""
    from swarm.dht import read_announcements

    dht = client.model.transformer.h.sequence_manager.dht
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.refresh_quarantine(0)
        online = {
            r.peer_id
            for r in read_announcements(dht, swarm.dht_prefix, swarm.num_blocks)
            if r.state == "online"
        }
        if not client.quarantine.peers & peers and peers <= online:
            return
        time.sleep(0.5)


def ask(chat: Any, params: Any) -> None:
    from client import GenerationFailed

    try:
        chat.send("Hi!", params).wait()
    except GenerationFailed as exc:  # waited longer than capacity_wait_timeout: expected here
        say(f"a conversation waited for cache and gave up: {exc}")


def measure_capacity(model_dir: Path, cache_tokens: int, quantum: int) -> dict[str, Any]:
    from client import ClientSettings, GenerationParams, SwarmClient
    from swarm.localswarm import LocalSwarm

    with (
        tempfile.TemporaryDirectory() as workdir,
        LocalSwarm(
            model=str(model_dir),
            workdir=Path(workdir),
            dht_prefix="benchcap",
            attn_cache_tokens=cache_tokens,
        ) as swarm,
    ):
        swarm.start(2)
        options = ClientSettings(session_reserve_quantum=quantum, capacity_wait_timeout=5)
        with SwarmClient(swarm.settings(), options) as client:
            chats, held = [], 0
            params = GenerationParams(max_new_tokens=16)
            for _ in range(4 * cache_tokens // quantum):
                chat = client.conversation()
                worker = threading.Thread(target=ask, args=(chat, params), daemon=True)
                worker.start()
                waited = False
                while worker.is_alive():
                    waited = waited or client.recovery_metrics.waiting_for_capacity > 0
                    time.sleep(0.05)
                if waited:
                    chat.close()
                    break
                chats.append(chat)
                held += 1
            for chat in chats:
                chat.close()
        return {
            "attn_cache_tokens": cache_tokens,
            "session_reserve_quantum": quantum,
            "context_window": 1024,
            "full_window_conversations_per_server": cache_tokens // 1024,
            "conversations_held_before_a_request_waits": held,
        }


def measure_throughput(client: Any, tokens: int, streams: list[int]) -> dict[str, Any]:
    from client import GenerationParams

    params = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens)
    out = {}
    for count in streams:
        results: list[Any] = []
        started = time.perf_counter()
        workers = [
            threading.Thread(target=lambda out=results: out.append(client.generate(PROMPT, params)))
            for _ in range(count)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - started
        total = sum(r.completion_tokens for r in results)
        out[str(count)] = {"tokens": total, "wall_s": wall, "tokens_per_s": total / wall}
        say(f"{count} streams: {total / wall:.1f} tokens/s aggregate")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="crashes for the stall figures")
    parser.add_argument("--tokens", type=int, default=96, help="tokens per answer")
    parser.add_argument("--cache-tokens", type=int, default=1024, help="tiny servers' cache")
    parser.add_argument("--quantum", type=int, default=128, help="session_reserve_quantum")
    parser.add_argument("--streams", default="1,8,32", help="concurrent streams to measure")
    parser.add_argument("--turn-tokens", type=int, default=1536, help="prompt+answer, computed")
    args = parser.parse_args(argv)

    from client import ClientSettings, SwarmClient
    from swarm.localswarm import LocalSwarm
    from swarm.models.tiny import ensure_tiny_llama

    model_dir = ensure_tiny_llama(progress=say)
    result: dict[str, Any] = {
        "computed_capacity_petals_default_cache": computed_capacity(args.turn_tokens, 256),
    }
    say("capacity with a small cache")
    result["tiny_capacity"] = measure_capacity(model_dir, args.cache_tokens, args.quantum)
    say("replicated swarm")
    with (
        tempfile.TemporaryDirectory() as workdir,
        LocalSwarm(
            model=str(model_dir), workdir=Path(workdir), dht_prefix="benchfail", progress=say
        ) as swarm,
    ):
        swarm.start(2, replication=2)
        options = ClientSettings()
        with SwarmClient(swarm.settings(), options) as client:
            result["client_settings"] = {
                "token_timeout": options.token_timeout,
                "step_timeout": options.step_timeout,
                "max_retries": options.max_retries,
            }
            result["failover"] = measure_stalls(client, swarm, args.kills, args.tokens)
            streams = [int(s) for s in args.streams.split(",")]
            result["aggregate_throughput"] = measure_throughput(client, 32, streams)
    path = write_results("failover", result)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
