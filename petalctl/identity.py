"""`petalctl identity new|show`: create a peer key file and print its PeerID."""

from __future__ import annotations

import argparse

from swarm.identity import create_identity, load_identity


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "identity",
        help="create or show a peer identity (key file -> PeerID)",
        description="A peer identity is a private key file (0600) that fixes a peer's PeerID. "
        "Bootstrap multiaddrs and the trusted-servers list are built from PeerIDs.",
    )
    actions = parser.add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="create a new key file and print its PeerID")
    new.add_argument("path", help="where to write the key (the directory must exist)")
    new.add_argument("--force", action="store_true", help="replace an existing key file")
    new.set_defaults(func=_new)
    show = actions.add_parser("show", help="print the PeerID of an existing key file")
    show.add_argument("path", help="the key file")
    show.set_defaults(func=_show)


def _new(args: argparse.Namespace) -> int:
    print(create_identity(args.path, overwrite=args.force).peer_id)
    return 0


def _show(args: argparse.Namespace) -> int:
    print(load_identity(args.path).peer_id)
    return 0
