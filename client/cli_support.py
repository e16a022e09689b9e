"""What the client's CLI commands share: settings and generation flags, a quiet petals log,
and building a started SwarmClient from the parsed arguments."""

from __future__ import annotations

import argparse
import logging

from client.params import GenerationParams
from client.settings import ClientSettings
from client.swarm_client import SwarmClient
from swarm.settings_base import add_arguments
from swarm.swarm_settings import SwarmSettings

SWARM_FIELDS = ("model", "dht_prefix", "initial_peers", "trusted_servers", "request_timeout")
CLIENT_FIELDS = ("chat_template", "max_retries", "connect_timeout", "context_window")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, SwarmSettings, SWARM_FIELDS)
    add_arguments(parser, ClientSettings, CLIENT_FIELDS, config_flag=False)


def add_generation_arguments(parser: argparse.ArgumentParser, *, max_new_default: int) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_default,
        help=f"answer length limit in tokens (default: {max_new_default})",
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 (the default) decodes greedily",
    )
    group.add_argument("--top-p", type=float, help="nucleus sampling mass (default: 1)")
    group.add_argument("--top-k", type=int, help="sample from the k likeliest (default: off)")
    group.add_argument(
        "--repetition-penalty", type=float, help="penalty for repeats, 1-2 (default: 1)"
    )
    group.add_argument(
        "--min-new-tokens", type=int, help="tokens to generate before the end may come"
    )
    group.add_argument(
        "--stop", action="append", metavar="TEXT", help="end the answer at TEXT (repeatable)"
    )


def generation_params(args: argparse.Namespace) -> GenerationParams:
    """Params from the flags; a bad value exits 2 with a message naming the flag's field."""
    return GenerationParams.build(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        temperature=args.temperature,
        do_sample=args.temperature > 0,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
    )


def quiet_petals(debug: bool) -> None:
    """Petals and hivemind log routes and licence notes at INFO on stderr; a CLI keeps stderr
    for its own messages unless --debug."""
    if not debug:
        for name in ("petals", "hivemind"):
            logging.getLogger(name).setLevel(logging.WARNING)


def started_client(args: argparse.Namespace) -> SwarmClient:
    swarm = SwarmSettings.from_args(args)
    options = ClientSettings.from_args(args)
    quiet_petals(getattr(args, "debug", False))
    return SwarmClient(swarm, options).start()
