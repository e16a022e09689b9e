"""`petalctl gateway`: serve the OpenAI- and chat.petals.dev-compatible HTTP API; and
`petalctl gateway token add|list|remove|hash` to manage its hashed bearer tokens."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from client.cli_support import add_client_arguments
    from client.gateway.settings import GatewaySettings
    from swarm.settings_base import add_arguments

    parser = subparsers.add_parser(
        "gateway",
        help="serve an OpenAI-compatible API (and chat.petals.dev's) for the private swarm",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models, "
        "/api/v1/generate and the WebSocket /api/v2/generate, answered through the trusted "
        "servers only. Bearer tokens come from a 0600 file made with `petalctl gateway token "
        "add NAME`. Metrics at /metrics, the OpenAPI schema at /openapi.json, docs at /docs.",
    )
    add_client_arguments(parser)
    add_arguments(parser, GatewaySettings, config_flag=False)
    parser.add_argument("--log-level", default="info", help="uvicorn's log level (default: info)")
    parser.set_defaults(func=run_gateway)

    tokens = parser.add_subparsers(dest="gateway_command", metavar="token|usage")
    token = tokens.add_parser("token", help="manage bearer tokens (hashed in a 0600 file)")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    for name, helptext, func in (
        ("add", "make a token for NAME, store its hash, print the token once", run_add),
        ("remove", "delete NAME's token", run_remove),
        ("list", "list the token names", run_list),
    ):
        action = actions.add_parser(name, help=helptext, description=helptext)
        if name != "list":
            action.add_argument("name", help="who the token is for (e.g. discord-bot)")
        action.add_argument(
            "--file",
            dest="token_file",
            help="the tokens file (default: tokens_file from env PETALS_GATEWAY_TOKENS_FILE "
            "or [gateway] in swarm.toml)",
        )
        action.add_argument("--config", dest="token_config", help="TOML settings file")
        action.set_defaults(func=func)
    usage = tokens.add_parser(
        "usage",
        help="requests and tokens per bearer token, read from a running gateway's /metrics",
        description="Counts since the gateway started (Prometheus keeps the history).",
    )
    usage.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the gateway (default: %(default)s)"
    )
    usage.set_defaults(func=run_usage)
    hashing = actions.add_parser(
        "hash",
        help="read a token on stdin, print NAME:sha256:HEX for token_hashes",
        description="For deployments that pass hashes in PETALS_GATEWAY_TOKEN_HASHES.",
    )
    hashing.add_argument("name")
    hashing.set_defaults(func=run_hash)


def run_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from client.cli_support import quiet_petals
    from client.gateway.app import create_app
    from client.gateway.settings import GatewaySettings
    from client.settings import ClientSettings
    from swarm.swarm_settings import SwarmSettings

    settings = GatewaySettings.from_args(args)
    swarm = SwarmSettings.from_args(args)
    quiet_petals(args.debug)
    access = logging.getLogger("client.gateway.access")
    if not access.handlers:  # one line per request on stderr (journald under systemd)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s access %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    app = create_app(settings, swarm=swarm, client_settings=ClientSettings.from_args(args))
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to whatever handler
    # was there before; with this one the process then exits 0 (a service stopped on purpose).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # uvicorn's access log is off: it would print query strings (a ?token= with
    # allow_query_token); the gateway writes its own line per request (client.gateway.access).
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=args.log_level, access_log=False
    )
    return 0


def run_usage(args: argparse.Namespace) -> int:
    import httpx

    from client.gateway.usage import format_usage, parse_usage
    from swarm.errors import ConfigError

    url = args.url.rstrip("/") + "/metrics"
    try:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot read {url}: {exc}") from None
    print(format_usage(parse_usage(response.text)))
    return 0


def _tokens_file(args: argparse.Namespace) -> Path:
    from client.gateway.settings import GatewaySettings
    from swarm.errors import ConfigError

    if args.token_file:
        return Path(args.token_file)
    settings = GatewaySettings.load(args.token_config)
    if settings.tokens_file is None:
        raise ConfigError(
            "no tokens file: give --file PATH or set tokens_file (env "
            "PETALS_GATEWAY_TOKENS_FILE, or [gateway] tokens_file in swarm.toml)"
        )
    return settings.tokens_file


def run_add(args: argparse.Namespace) -> int:
    from client.gateway.tokens import add_token

    path = _tokens_file(args)
    token = add_token(path, args.name)
    print(token)
    print(
        f"(stored its hash as {args.name!r} in {path}; this is the only time the token is shown)",
        file=sys.stderr,
    )
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from client.gateway.tokens import remove_token

    remove_token(_tokens_file(args), args.name)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from client.gateway.tokens import read_tokens_file

    for name in read_tokens_file(_tokens_file(args)):
        print(name)
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from client.gateway.tokens import hash_token

    token = sys.stdin.readline().strip()
    if not token:
        from swarm.errors import ConfigError

        raise ConfigError("no token on stdin")
    print(f"{args.name}:{hash_token(token)}")
    return 0
