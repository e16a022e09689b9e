"""`petalctl demo`: a whole private swarm on 127.0.0.1 (bootstrap + servers), then a chat."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from swarm.errors import ConfigError

if TYPE_CHECKING:
    from swarm.localswarm import LocalSwarm

DEFAULT_QUESTION_HINT = "Type a question and press Enter; an empty line or Ctrl-D quits."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a private swarm on 127.0.0.1 with a tiny model and chat with it",
        description="Start a bootstrap peer and servers that split the model's blocks on "
        "127.0.0.1, wait until every block is served, print the servers and blocks, then answer "
        "--prompt or open an interactive chat with streamed tokens. Ctrl-C stops everything.",
    )
    parser.add_argument("--prompt", help="answer this question and exit (default: interactive)")
    parser.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (the tiny offline Llama, StableBeluga-style chat), 'tiny-llama3' (a tiny "
        "Llama-3.1-shaped one: GQA, llama3 rope, <|eot_id|> chat template), both made on first "
        "use in ~/.cache/petals-swarm-kit or $PETALS_KIT_CACHE; or a local model dir or "
        "Hugging Face name (default: tiny)",
    )
    parser.add_argument("--servers", type=int, default=2, help="servers to start (default: 2)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=200, help="answer length limit (default: 200)"
    )
    parser.add_argument("--system", help="system prompt for the chat (default: none)", default=None)
    parser.add_argument(
        "--workdir", help="keep identities and logs here (default: a temporary dir, removed)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for every block to be served (default: 300)",
    )
    parser.set_defaults(func=run)


class _Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.step = 0

    def step_line(self, message: str) -> None:
        self.step += 1
        self.say(f"step {self.step}: {message}")

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.servers < 1:
        raise ConfigError(f"--servers {args.servers}: need at least 1 server")
    if not 1 <= args.max_new_tokens <= 4096:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: must be within 1..4096")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # stop cleanly under `kill` too
    signal.signal(signal.SIGINT, _raise_interrupt)  # even if started with SIGINT ignored
    progress = _Progress()
    from swarm.launch import model_num_blocks
    from swarm.localswarm import LocalSwarm
    from swarm.models.tiny import FLAVOURS, ensure_tiny_llama

    if args.model in FLAVOURS:
        progress.step_line(f"preparing the {args.model} offline Llama")
        model = str(ensure_tiny_llama(spec=FLAVOURS[args.model], progress=progress.say))
    else:
        model = args.model
    num_blocks = model_num_blocks(model)
    if args.servers > num_blocks:
        raise ConfigError(f"--servers {args.servers}: the model has only {num_blocks} blocks")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="petals-demo-"))
    swarm = LocalSwarm(model=model, workdir=workdir, progress=progress.say)
    try:
        progress.step_line(f"starting a private swarm: 1 bootstrap peer + {args.servers} servers")
        swarm.start(args.servers, timeout=args.timeout)
        from swarm.coverage import render_status

        progress.step_line("every block is served")
        print(
            render_status(
                swarm.announcements(),
                num_blocks,
                dht_prefix=swarm.dht_prefix,
                trusted=swarm.trusted_peer_ids,
            ),
            flush=True,
        )
        progress.step_line("connecting a client that routes only through the trusted servers")
        return _chat(swarm, model, args, progress)
    except KeyboardInterrupt:
        progress.say("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        swarm.stop()
        progress.say("stopped every process of the demo")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _chat(swarm: LocalSwarm, model: str, args: argparse.Namespace, progress: _Progress) -> int:
    from transformers import AutoTokenizer

    from client.generation import stream_generate
    from client.petals_model import open_distributed_model

    tokenizer = AutoTokenizer.from_pretrained(model)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    with open_distributed_model(swarm.settings()) as lm:
        progress.say("ready")
        questions = [args.prompt] if args.prompt is not None else None
        if questions is None:
            print(DEFAULT_QUESTION_HINT, file=sys.stderr, flush=True)
        while True:
            if questions is not None:
                if not questions:
                    return 0
                question = questions.pop()
                print(f"> {question}", flush=True)
            else:
                try:
                    question = input("> ")
                except EOFError:
                    return 0
                if not question.strip():
                    return 0
            messages.append({"role": "user", "content": question})
            input_ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt"
            )
            result = stream_generate(
                lm,
                tokenizer,
                input_ids,
                max_new_tokens=args.max_new_tokens,
                on_text=lambda delta: print(delta, end="", flush=True),
                stop_sequences=("### User:", "### System:"),
            )
            print(flush=True)
            messages.append({"role": "assistant", "content": result.text.strip()})
            ttft = result.time_to_first_token_s or 0.0
            speed = result.tokens_per_second
            print(
                f"({len(result.token_ids)} tokens, first token after {ttft:.2f}s"
                + (f", {speed:.1f} tokens/s" if speed else "")
                + f", stopped by {result.stopped_by})",
                file=sys.stderr,
                flush=True,
            )
