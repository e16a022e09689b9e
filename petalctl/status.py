"""`petalctl status`: the private swarm's block coverage as a table, read from the DHT."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from swarm.errors import EXIT_UNAVAILABLE
from swarm.settings_base import add_arguments
from swarm.swarm_settings import SwarmSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show which servers serve which blocks (read from the DHT)",
        description="Read the swarm's DHT and print each server (name, PeerID, blocks, state, "
        "throughput, trusted) and the blocks' coverage. Exit 0 when every block has an online "
        "trusted server (any server when no trusted list is set), 3 when some block has none.",
    )
    add_arguments(
        parser, SwarmSettings, ("model", "dht_prefix", "initial_peers", "trusted_servers")
    )
    parser.add_argument("--num-blocks", type=int, help="blocks in the model (default: from model)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swarm.coverage import render_status, servers_per_block
    from swarm.dht import open_dht, read_announcements
    from swarm.launch import model_num_blocks

    settings = SwarmSettings.from_args(args)
    peers = settings.require_initial_peers()
    num_blocks = args.num_blocks or model_num_blocks(settings.model)
    trusted = settings.trusted_servers or None
    with open_dht(peers) as dht:
        records = read_announcements(dht, settings.effective_dht_prefix, num_blocks)
    per_block = servers_per_block(records, num_blocks, trusted=trusted)
    covered = all(per_block)
    if args.json:
        print(
            json.dumps(
                {
                    "dht_prefix": settings.effective_dht_prefix,
                    "num_blocks": num_blocks,
                    "servers": [
                        asdict(r) | {"trusted": trusted is None or r.peer_id in trusted}
                        for r in records
                    ],
                    "block_servers": [[r.peer_id for r in servers] for servers in per_block],
                    "covered": covered,
                },
                indent=2,
            )
        )
    else:
        print(
            render_status(
                records, num_blocks, dht_prefix=settings.effective_dht_prefix, trusted=trusted
            )
        )
    return 0 if covered else EXIT_UNAVAILABLE
