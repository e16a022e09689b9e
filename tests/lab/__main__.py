"""The lab for humans.

`python -m tests.lab up boot1 srv1 [--outsider o1] [--bind-ro SRC:DST]` boots hosts and holds them
until Ctrl-C; `clean` removes what crashed runs left; `base` builds the base rootfs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from tests.lab.labhosts import Lab, LabError, base_rootfs
from tests.lab.reaper import cleanup_stale


def _up(args: argparse.Namespace) -> None:
    binds = dict(b.split(":", 1) for b in args.bind_ro)
    with Lab(args.hosts, outsiders=args.outsider, bind_ro=binds) as lab:
        inventory = lab.write_inventory(lab.workdir / "inventory.ini")
        print(f"lab {lab.rid} up in {lab.timings['boot']:.1f}s; inventory {inventory}")
        print(f"controller: ip netns exec {lab.netns} bash   (ANSIBLE_CONFIG={lab.ansible_cfg})")
        for host in lab.all_hosts:
            print(f"  {host:12} {lab.ip(host):15} {lab.states[host]}")
        print(f"ssh: ip netns exec {lab.netns} ssh -i {lab.key_path} root@<address>")
        print("Ctrl-C tears it down")
        signal.pause()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="boot hosts and hold them until Ctrl-C")
    up.add_argument("hosts", nargs="+")
    up.add_argument(
        "--outsider", action="append", default=[], help="a host outside the trusted CIDR"
    )
    up.add_argument("--bind-ro", action="append", default=[], metavar="SRC:DST")
    sub.add_parser("clean", help="remove what crashed runs left (processes, mounts, namespaces)")
    sub.add_parser("base", help="build (or find) the cached base rootfs and print its path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "base":
            print(base_rootfs())
        elif args.command == "clean":
            print("removed runs:", ", ".join(cleanup_stale()) or "none")
        else:
            _up(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
