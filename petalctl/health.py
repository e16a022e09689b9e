"""`petalctl health`: the health service for the private swarm (metrics, state API, status page)."""

from __future__ import annotations

import argparse

from swarm.settings_base import add_arguments
from swarm.swarm_settings import SwarmSettings

SWARM_FIELDS = ("model", "dht_prefix", "initial_peers", "trusted_servers", "request_timeout")


def register(subparsers: argparse._SubParsersAction) -> None:
    from monitoring.settings import HealthSettings

    parser = subparsers.add_parser(
        "health",
        help="serve the swarm's health: /metrics, /api/v1/state, /healthz and a status page",
        description="Watch the private swarm from inside: read its DHT every refresh interval "
        "(coverage per block, every server's state, throughput, cache and version; servers that "
        "announce ONLINE but do not answer a ping are 'unreachable'), generate a few tokens "
        "through the trusted servers every probe interval (time to first token, tokens/s), and "
        "serve it all over HTTP for Prometheus and people. SIGTERM/SIGINT stop it cleanly. "
        "Swarm settings come from [swarm] in swarm.toml / PETALS_*, the service's own from "
        "[health] / PETALS_HEALTH_*, the probe's client from [client] / PETALS_CLIENT_*; flags "
        "override them.",
    )
    add_arguments(parser, SwarmSettings, SWARM_FIELDS)
    add_arguments(parser, HealthSettings, config_flag=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from client.settings import ClientSettings
    from monitoring.service import run_service
    from monitoring.settings import HealthSettings

    swarm = SwarmSettings.from_args(args)
    health = HealthSettings.from_args(args)
    # The probe's client reads [client] from the same file as everything else (--config too).
    client = ClientSettings.load(getattr(args, "config", None))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_service(swarm, health, client)
