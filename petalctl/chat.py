"""`petalctl chat` (interactive, streamed) and `petalctl generate` (one answer, for scripts)."""

from __future__ import annotations

import argparse
import signal
import sys

HELP = (
    "Commands: /reset (forget the chat), /system TEXT (set the system prompt; empty: none), "
    "/help. Ctrl-C stops an answer, Ctrl-D quits."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from client.cli_support import add_client_arguments, add_generation_arguments

    chat = subparsers.add_parser(
        "chat",
        help="chat with the private swarm's model, answers streamed",
        description="An interactive chat through the trusted servers only. " + HELP,
    )
    add_client_arguments(chat)
    add_generation_arguments(chat, max_new_default=512)
    chat.add_argument("--system", help="system prompt (default: none)")
    chat.add_argument("--stats", action="store_true", help="print speed after each answer")
    chat.set_defaults(func=run_chat)

    generate = subparsers.add_parser(
        "generate",
        help="answer one prompt; stdout gets only the answer",
        description="Send one prompt through the trusted servers and write the answer (and a "
        "newline) to stdout, streamed. Exit codes: 0 answered, 2 bad input or settings, "
        "3 the swarm cannot serve.",
    )
    add_client_arguments(generate)
    add_generation_arguments(generate, max_new_default=256)
    generate.add_argument("--prompt", required=True, help="the question; '-' reads stdin")
    generate.add_argument("--system", help="system prompt (default: none)")
    generate.add_argument(
        "--raw", action="store_true", help="send the prompt as is, without the chat template"
    )
    generate.add_argument(
        "--stats", action="store_true", help="print tokens, first-token time and speed to stderr"
    )
    generate.set_defaults(func=run_generate)


def _stats_line(stats: object) -> str:
    from client.streams import StreamStats

    assert isinstance(stats, StreamStats)
    parts = [f"{stats.completion_tokens} tokens"]
    if stats.time_to_first_token_s is not None:
        parts.append(f"first after {stats.time_to_first_token_s:.2f} s")
    if stats.tokens_per_second is not None:
        parts.append(f"{stats.tokens_per_second:.1f} tokens/s")
    parts.append(f"stopped by {stats.stop_reason}")
    return "(" + ", ".join(parts) + ")"


def run_generate(args: argparse.Namespace) -> int:
    from client.cli_support import generation_params, started_client
    from swarm.errors import ConfigError

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise ConfigError("--prompt is empty: give the question to answer")
    params = generation_params(args)
    if args.raw:
        request: object = prompt
    else:
        request = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}
        ]
    with started_client(args) as client:
        prepared = client.prepare(request, params)  # type: ignore[arg-type]
        stream = client.stream(prepared)
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.stats:
            print(_stats_line(stream.result), file=sys.stderr)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from client.cli_support import generation_params, started_client

    # Ctrl-C stops an answer even when the chat was started with SIGINT ignored (a script's
    # background job, nohup): Python then installs no KeyboardInterrupt handler at all.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    params = generation_params(args)
    print("connecting to the private swarm...", file=sys.stderr, flush=True)
    with started_client(args) as client, client.conversation(args.system) as conversation:
        print(f"connected: {client.model_name}. {HELP}", file=sys.stderr, flush=True)
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:  # at the prompt: a fresh line, like a shell
                print(file=sys.stderr)
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                _command(conversation, text)
                continue
            _answer(conversation, text, params, args.stats)


def _command(conversation: object, text: str) -> None:
    from client.conversation import Conversation

    assert isinstance(conversation, Conversation)
    command, _, rest = text.partition(" ")
    if command == "/reset":
        conversation.reset()
        print("(chat forgotten)", file=sys.stderr)
    elif command == "/system":
        conversation.system = rest.strip() or None
        print(f"(system prompt {'set' if rest.strip() else 'cleared'})", file=sys.stderr)
    elif command == "/help":
        print(HELP, file=sys.stderr)
    else:
        print(f"unknown command {command!r}. {HELP}", file=sys.stderr)


def _answer(conversation: object, text: str, params: object, show_stats: bool) -> None:
    from client.conversation import Conversation
    from client.params import GenerationParams

    assert isinstance(conversation, Conversation) and isinstance(params, GenerationParams)
    stream = conversation.send(text, params)
    try:
        for delta in stream:
            print(delta, end="", flush=True)
    except KeyboardInterrupt:  # Ctrl-C stops this answer, not the program
        stream.cancel()
        stream.wait(timeout=60)
        print(" [stopped]", end="", flush=True)
    print(flush=True)
    if show_stats:
        print(_stats_line(stream.result), file=sys.stderr, flush=True)
