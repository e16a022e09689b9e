"""`petalctl`: one command line for the kit. Subcommands live in small modules that register
themselves; each parses its arguments, calls library functions and returns an exit code."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from swarm.errors import EXIT_INTERRUPTED, KitError

# Modules with `register(subparsers)`; each adds one or more subcommands whose `func(args) -> int`
# does the work. Heavy imports (torch, petals) happen inside those functions, so `--help` is fast.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "petalctl.identity",
    "petalctl.run",
    "petalctl.demo",
    "petalctl.status",
    "petalctl.plan",
    "petalctl.model",
    "petalctl.health",
    "petalctl.bot",
    "petalctl.chat",
    "petalctl.gateway",
    "petalctl.gpu_exporter",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petalctl",
        description="Run and use a private Petals swarm: bootstrap peers, servers, status, demo.",
        epilog="Every subcommand has --help. Settings come from flags, PETALS_* environment "
        "variables and swarm.toml (see README).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # a subcommand module not present in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KitError as exc:
        if args.debug:
            raise
        print(f"petalctl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("petalctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
