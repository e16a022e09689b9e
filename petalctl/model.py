"""`petalctl model tiny DIR`: make the tiny offline Llama used by the demo and the tests."""

from __future__ import annotations

import argparse
import sys

from swarm.models.tiny import DEFAULT_SPEC, TinySpec, make_tiny_llama


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model",
        help="model utilities (make the tiny test model)",
        description="Model utilities.",
    )
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    tiny = actions.add_parser(
        "tiny",
        help="write the tiny byte-level Llama (8 blocks, offline, reproducible) to DIR",
        description="Write a tiny Llama (8 blocks, hidden 64, byte-level tokenizer with a chat "
        "template) made from a fixed seed and a short deterministic training run on text the "
        "kit ships. Same options, same weights.",
    )
    tiny.add_argument("directory", help="output directory (replaced if it exists)")
    tiny.add_argument(
        "--train-steps",
        type=int,
        default=DEFAULT_SPEC.train_steps,
        help=f"training steps on the shipped text; 0 = random weights "
        f"(default: {DEFAULT_SPEC.train_steps})",
    )
    tiny.set_defaults(func=_tiny)


def _tiny(args: argparse.Namespace) -> int:
    spec = TinySpec(train_steps=max(0, args.train_steps))
    path = make_tiny_llama(args.directory, spec, progress=lambda m: print(m, file=sys.stderr))
    print(path)
    return 0
