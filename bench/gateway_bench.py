"""Streaming through the gateway vs the client library directly, on a loopback swarm, in one run.

Starts a private swarm (bootstrap + 2 servers, tiny model) and `petalctl gateway` as its own
process, as deployed. Measures, streaming a fixed number of tokens each time:
  - decode tokens/s of one stream: direct SwarmClient vs SSE through the gateway, and the ratio;
  - time to first token (fresh session each request), p50/p95, direct and through the gateway;
  - aggregate tokens/s through the gateway with 1, 4 and 8 concurrent streams;
  - first token in the web chat: headless Chromium (tests/client/cdp.py) signs in at the
    gateway's page and sends a question; the time from the form's submit to the first streamed
    piece drawn in the page (the browser's own clock), p50/p95 over fresh chats.
Prints the figures and writes bench/results/gateway.json.
Run: .venv/bin/python -m bench.gateway_bench [--tokens 64 --runs 5 --ttft-requests 20
     --webchat-requests 10]   (--webchat-requests 0 leaves Chromium out)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import percentile, write_results

PROMPT = "Once upon a time"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def sse_stream(
    client: Any, url: str, headers: dict[str, str], body: dict[str, Any]
) -> dict[str, float]:
    """One streamed completion; times taken where the client receives the events."""
    sent = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers, timeout=300) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["text"]:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
    assert first is not None and last is not None and tokens > 1
    return {
        "ttft_s": first - sent,
        "tokens": tokens,
        "tokens_per_s": (tokens - 1) / (last - first),
        "started": sent,
        "ended": last,
    }


def conversation_ttfts(client: Any, turns: int) -> tuple[list[float], list[float]]:
    """Time to first token of a conversation's later turns (continuing its inference session)
    and of the same prompts sent as fresh one-shot requests (new session, whole history)."""
    from client import GenerationParams

    params = GenerationParams(max_new_tokens=24)
    reused: list[float] = []
    fresh: list[float] = []
    with client.conversation("You are a helpful assistant.") as chat:
        for turn in range(turns):
            question = f"Question {turn}: what is a block?"
            history = [*chat.messages, {"role": "user", "content": question}]
            stats = chat.send(question, params).wait()
            if stats.reused_session:
                reused.append(stats.time_to_first_token_s or 0.0)
                fresh.append(client.generate(history, params).time_to_first_token_s or 0.0)
    return reused, fresh


async def measure(
    client: Any,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    args: argparse.Namespace,
    levels: list[int],
) -> dict[str, Any]:
    """Direct and gateway runs alternate, so both see the same load from whatever else the
    machine runs; the direct client's blocking calls go to a thread."""
    import httpx

    from client import GenerationParams

    fixed = GenerationParams(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    short_params = GenerationParams(max_new_tokens=2)
    completions = url + "/v1/completions"
    short = {**body, "max_tokens": 2, "min_tokens": 2}
    out: dict[str, Any] = {"direct": [], "single": [], "direct_ttft": [], "ttft": []}
    async with httpx.AsyncClient() as http:
        await asyncio.to_thread(client.generate, PROMPT, short_params)  # warm-up both paths
        await sse_stream(http, completions, headers, short)
        say(f"one stream of {args.tokens} tokens, {args.runs} times each way")
        for _ in range(args.runs):
            out["direct"].append(await asyncio.to_thread(client.generate, PROMPT, fixed))
            out["single"].append(await sse_stream(http, completions, headers, body))
        say(f"time to first token, {args.ttft_requests} requests each way")
        for _ in range(args.ttft_requests):
            stats = await asyncio.to_thread(client.generate, PROMPT, short_params)
            out["direct_ttft"].append(stats.time_to_first_token_s or 0.0)
            out["ttft"].append((await sse_stream(http, completions, headers, short))["ttft_s"])
        say("conversation turns: continued session vs a fresh one")
        out["reused"], out["fresh"] = await asyncio.to_thread(conversation_ttfts, client, 8)
        aggregate = {}
        for level in levels:
            say(f"{level} concurrent streams through the gateway")
            runs = await asyncio.gather(
                *(sse_stream(http, completions, headers, body) for _ in range(level))
            )
            wall = max(r["ended"] for r in runs) - min(r["started"] for r in runs)
            aggregate[str(level)] = {
                "aggregate_tokens_per_s": round(sum(r["tokens"] for r in runs) / wall, 1),
                "per_stream_tokens_per_s_median": round(
                    statistics.median(r["tokens_per_s"] for r in runs), 1
                ),
                "ttft_p50_s": round(percentile([r["ttft_s"] for r in runs], 0.5), 3),
            }
        out["aggregate"] = aggregate
    return out


# Runs in the page: a fresh chat, one question, resolved with the milliseconds from the form's
# submit to the first streamed piece in the answer's bubble (chat.js counts them in data-chunks).
WEBCHAT_FIRST_PIECE_JS = """
new Promise((resolve) => {
  document.getElementById("new").click();
  const box = document.getElementById("messages");
  let started = 0;
  const check = () => {
    const all = box.querySelectorAll(".msg.assistant");
    const last = all[all.length - 1];
    if (last && Number(last.dataset.chunks || 0) >= 1) {
      observer.disconnect();
      resolve(performance.now() - started);
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(box, { subtree: true, childList: true, attributes: true });
  document.getElementById("input").value = "What is a block?";
  started = performance.now();
  document.getElementById("ask").requestSubmit();
})
"""


def webchat_first_piece(url: str, token: str, requests: int) -> list[float]:
    """Seconds from submit to the first piece drawn, in headless Chromium, per fresh chat."""
    from tests.client.cdp import Browser
    from tests.client.conftest import poll

    times: list[float] = []
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(Path(profile))
        try:
            browser.goto(url + "/")
            poll(lambda: browser.eval("!document.getElementById('login').hidden"), 30, "sign-in")
            browser.eval(f"document.getElementById('token').value = {json.dumps(token)}")
            browser.eval("document.getElementById('login-form').requestSubmit()")
            poll(lambda: browser.eval("!document.getElementById('chat').hidden"), 30, "the chat")
            browser.eval("document.getElementById('max-tokens').value = 8")
            browser.eval("document.getElementById('temperature').value = 0")
            for index in range(requests + 1):  # the first one warms the page up
                millis = browser.eval(WEBCHAT_FIRST_PIECE_JS)
                poll(
                    lambda: browser.eval("document.body.dataset.busy") == "0",
                    120,
                    "the web chat's answer to end",
                )
                if index:
                    times.append(millis / 1000)
        finally:
            browser.close()
    return times


def start_gateway(swarm: Any, tokens_file: Path, port: int, log: Path) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "petalctl.main",
        "gateway",
        "--model",
        swarm.model,
        "--dht-prefix",
        swarm.dht_prefix,
        "--initial-peers",
        *swarm.initial_peers,
        "--trusted-servers",
        *swarm.trusted_peer_ids,
        "--tokens-file",
        str(tokens_file),
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--rate-limit-per-minute",
        "100000",
        "--rate-limit-burst",
        "100000",
        "--max-concurrent-per-token",
        "64",
    ]
    handle = log.open("wb")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).json().get("ok"):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError("the gateway did not become healthy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--runs", type=int, default=8, help="single-stream runs per side")
    parser.add_argument("--ttft-requests", type=int, default=20, help="requests for TTFT p50/p95")
    parser.add_argument("--concurrency", default="1,4,8", help="concurrent stream counts")
    parser.add_argument(
        "--webchat-requests",
        type=int,
        default=10,
        help="web chat questions in headless Chromium, for its first-token p50/p95 (0: skip)",
    )
    args = parser.parse_args(argv)

    import httpx

    from client import ClientSettings, SwarmClient
    from client.cli_support import quiet_petals
    from client.gateway.tokens import add_token
    from swarm.localswarm import LocalSwarm, free_port
    from swarm.models.tiny import ensure_tiny_llama

    quiet_petals(False)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request
    model_dir = ensure_tiny_llama(progress=say)
    levels = [int(n) for n in args.concurrency.split(",")]
    body = {
        "prompt": PROMPT,
        "max_tokens": args.tokens,
        "min_tokens": args.tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with LocalSwarm(model=str(model_dir), workdir=workdir / "swarm", progress=say) as swarm:
            swarm.start(2)
            token = add_token(workdir / "tokens", "bench")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            gateway = start_gateway(swarm, workdir / "tokens", port, workdir / "gateway.log")
            try:
                wait_healthy(url, gateway)
                headers = {"Authorization": f"Bearer {token}"}
                body["model"] = httpx.get(url + "/v1/models", headers=headers).json()["data"][0][
                    "id"
                ]

                with SwarmClient(swarm.settings(), ClientSettings()) as client:
                    measured = asyncio.run(measure(client, url, headers, body, args, levels))
                webchat = []
                if args.webchat_requests > 0:
                    say(f"first token in the web chat, {args.webchat_requests} questions")
                    webchat = webchat_first_piece(url, token, args.webchat_requests)
            finally:
                gateway.send_signal(signal.SIGTERM)
                try:
                    gateway.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(gateway.pid, signal.SIGKILL)
                    gateway.wait()

    direct = measured["direct"]
    direct_ttft, reused, fresh = measured["direct_ttft"], measured["reused"], measured["fresh"]
    direct_tps = statistics.median(s.tokens_per_second or 0.0 for s in direct)
    gateway_tps = statistics.median(r["tokens_per_s"] for r in measured["single"])
    gateway_ttft = measured["ttft"]
    results = {
        "model": "tiny-llama (8 blocks, hidden 64, byte-level)",
        "servers": 2,
        "tokens_per_stream": args.tokens,
        "direct_tokens_per_s": round(direct_tps, 1),
        "gateway_tokens_per_s": round(gateway_tps, 1),
        "gateway_to_direct_ratio": round(gateway_tps / direct_tps, 3),
        "direct_ttft_p50_s": round(percentile(direct_ttft, 0.5), 3),
        "direct_ttft_p95_s": round(percentile(direct_ttft, 0.95), 3),
        "gateway_ttft_p50_s": round(percentile(gateway_ttft, 0.5), 3),
        "gateway_ttft_p95_s": round(percentile(gateway_ttft, 0.95), 3),
        "ttft_requests": args.ttft_requests,
        "conversation_turn_ttft_reused_session_p50_s": round(percentile(reused, 0.5), 3),
        "conversation_turn_ttft_fresh_session_p50_s": round(percentile(fresh, 0.5), 3),
        "concurrent_streams": measured["aggregate"],
    }
    if webchat:
        results["webchat_first_piece_p50_s"] = round(percentile(webchat, 0.5), 3)
        results["webchat_first_piece_p95_s"] = round(percentile(webchat, 0.95), 3)
        results["webchat_requests"] = len(webchat)
    path = write_results("gateway", results)
    print(
        f"streamed tokens/s, one stream: direct {results['direct_tokens_per_s']}, "
        f"gateway {results['gateway_tokens_per_s']} "
        f"(ratio {results['gateway_to_direct_ratio']})"
    )
    print(
        f"time to first token: direct p50 {results['direct_ttft_p50_s']} s / p95 "
        f"{results['direct_ttft_p95_s']} s; gateway p50 {results['gateway_ttft_p50_s']} s / "
        f"p95 {results['gateway_ttft_p95_s']} s"
    )
    print(
        "conversation turn, time to first token p50: reused session "
        f"{results['conversation_turn_ttft_reused_session_p50_s']} s, fresh session "
        f"{results['conversation_turn_ttft_fresh_session_p50_s']} s"
    )
    for level, figures in results["concurrent_streams"].items():
        print(
            f"{level} concurrent stream(s) through the gateway: "
            f"{figures['aggregate_tokens_per_s']} tokens/s in all, "
            f"{figures['per_stream_tokens_per_s_median']} per stream"
        )
    if webchat:
        print(
            "web chat (headless Chromium), submit to first piece drawn: p50 "
            f"{results['webchat_first_piece_p50_s']} s / p95 "
            f"{results['webchat_first_piece_p95_s']} s"
        )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
