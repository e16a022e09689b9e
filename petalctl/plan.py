"""`petalctl plan`: which blocks each GPU in the inventory should serve."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from swarm.errors import ConfigError
from swarm.inventory import gpus_from_inventory, load_inventory, model_settings
from swarm.modelspecs import QUANTS, known_names, lookup
from swarm.plan_render import plan_to_dict, ranges_from_dict, render_plan_table
from swarm.planner import DEFAULT_ATTN_CACHE_TOKENS_GQA, describe_changes, plan, replan


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show which blocks each GPU in the inventory should serve",
        description="Lay the model's blocks out over the inventory's [gpu_servers] GPUs: one "
        "contiguous range per GPU, every block on --replication servers on distinct hosts "
        "wherever the hardware allows, load spread evenly. Flags override the inventory's "
        "variables.",
        epilog=f"Known models: {', '.join(known_names())}.",
    )
    parser.add_argument(
        "-i",
        "--inventory",
        required=True,
        type=Path,
        metavar="INVENTORY",
        help="Ansible inventory, resolved by ansible-inventory when it is installed "
        "(group_vars/, host_vars/); GPU sizes come from petals_gpu_memory_gib on each "
        "[gpu_servers] host",
    )
    parser.add_argument(
        "--model",
        help="model name or local model directory (default: petals_model from the inventory)",
    )
    parser.add_argument(
        "--quant",
        choices=QUANTS,
        help="weight format (default: petals_quant from the inventory, else bf16)",
    )
    parser.add_argument(
        "--replication",
        type=_positive_int,
        metavar="N",
        help="servers per block (default: petals_replication from the inventory, else 1)",
    )
    parser.add_argument(
        "--attn-cache-tokens",
        type=_positive_int,
        metavar="N",
        help="attention cache per block in tokens (default: petals_attn_cache_tokens from the "
        f"inventory, else Petals' default: {DEFAULT_ATTN_CACHE_TOKENS_GQA} for GQA models "
        "such as the 70B Llamas)",
    )
    parser.add_argument(
        "--previous",
        type=Path,
        metavar="PLAN_JSON",
        help="a plan printed earlier with --json, or the layout site.yml read back from the "
        "hosts (.petals/layout.json): keep its ranges where they still fit and list the "
        "servers that must start, restart or stop (default: plan from scratch)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run)


def _read_previous(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--previous {str(path)!r} cannot be read as JSON ({exc})") from None


def run(args: argparse.Namespace) -> int:
    inventory = load_inventory(args.inventory)
    settings = model_settings(inventory)
    model = args.model or settings.model
    if not model:
        raise ConfigError(
            f"no model: set petals_model in [all:vars] of {inventory.source} or pass --model"
        )
    spec = lookup(model)
    gpus = gpus_from_inventory(inventory)
    options: dict[str, Any] = {
        "quant": args.quant or settings.quant,
        "replication": args.replication or settings.replication,
        "attn_cache_tokens": args.attn_cache_tokens or settings.attn_cache_tokens,
    }
    changes: list[str] = []
    if args.previous is not None:
        previous = ranges_from_dict(_read_previous(args.previous))
        result = replan(previous, gpus, spec, **options)
        changes = describe_changes(previous, result)
    else:
        result = plan(gpus, spec, **options)
    if args.json:
        document = plan_to_dict(result)
        if args.previous is not None:
            document["changes"] = changes
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    sys.stdout.write(render_plan_table(result))
    if args.previous is not None:
        sys.stdout.write("\nChanges from the previous plan:\n")
        sys.stdout.write("".join(f"  {line}\n" for line in changes) or "  none\n")
    return 0
