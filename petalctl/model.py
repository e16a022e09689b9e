"""`petalctl model tiny DIR`: make the tiny offline Llama used by the demo and the tests."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from swarm.models.tiny import DEFAULT_SPEC, FLAVOURS, make_tiny_llama


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model",
        help="model utilities (make the tiny test model)",
        description="Model utilities.",
    )
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    tiny = actions.add_parser(
        "tiny",
        help="write a tiny byte-level Llama (offline, reproducible) to DIR",
        description="Write a tiny Llama (byte-level tokenizer with a chat template) made from a "
        "fixed seed and a short deterministic float64 training run on text the kit ships, "
        "rounded to bfloat16 values. Same options, same weights.",
    )
    tiny.add_argument("directory", help="output directory (replaced if it exists)")
    tiny.add_argument(
        "--flavour",
        choices=sorted(FLAVOURS),
        default="tiny",
        help="tiny: 8 blocks, StableBeluga-style chat; tiny-llama3: 4 blocks shaped like "
        "Llama-3.1 (GQA, llama3 rope, <|eot_id|> chat template) (default: tiny)",
    )
    tiny.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help=f"training steps on the shipped text; 0 = random weights "
        f"(default: {DEFAULT_SPEC.train_steps} for tiny, "
        f"{FLAVOURS['tiny-llama3'].train_steps} for tiny-llama3)",
    )
    tiny.set_defaults(func=_tiny)


def _tiny(args: argparse.Namespace) -> int:
    spec = FLAVOURS[args.flavour]
    if args.train_steps is not None:
        spec = dataclasses.replace(spec, train_steps=max(0, args.train_steps))
    path = make_tiny_llama(args.directory, spec, progress=lambda m: print(m, file=sys.stderr))
    print(path)
    return 0
