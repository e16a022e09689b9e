"""`petalctl bot`: run the Discord course bot on the private swarm (or export its ratings)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from bot.settings import HIDDEN_FIELDS, TOKEN_ENV, BotSettings
    from client.settings import ClientSettings
    from swarm.settings_base import add_arguments
    from swarm.swarm_settings import SwarmSettings

    parser = subparsers.add_parser(
        "bot",
        help="run the Discord course bot on the private swarm",
        description="Answer students' questions in Discord with the private swarm: streamed "
        "answers, follow-ups by reply or in threads, course files as context, ratings in SQLite, "
        "an Alertmanager webhook and /metrics. The token comes only from env "
        f"{TOKEN_ENV} or --token-file (mode 0600).",
    )
    visible = [name for name in BotSettings.model_fields if name not in HIDDEN_FIELDS]
    add_arguments(parser, BotSettings, visible)
    add_arguments(
        parser,
        SwarmSettings,
        ("model", "dht_prefix", "initial_peers", "trusted_servers", "request_timeout"),
        config_flag=False,
    )
    add_arguments(
        parser,
        ClientSettings,
        ("chat_template", "max_retries", "connect_timeout", "context_window"),
        config_flag=False,
    )
    parser.add_argument(
        "--export-csv",
        metavar="FILE",
        help="write every answer with its timings and ratings as CSV to FILE ('-': stdout) "
        "and exit",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bot.settings import BotSettings, load_token, load_webhook_secret
    from bot.store import Store

    settings = BotSettings.from_args(args)
    if args.export_csv:
        store = Store(settings.database)
        try:
            text = store.export_csv()
        finally:
            store.close()
        if args.export_csv == "-":
            sys.stdout.write(text)
        else:
            Path(args.export_csv).write_text(text, encoding="utf-8")
        return 0

    import asyncio

    from bot.run import configure_logging, point_discord_at, run_bot
    from client.settings import ClientSettings
    from swarm.swarm_settings import SwarmSettings

    swarm = SwarmSettings.from_args(args)
    swarm.require_initial_peers()
    swarm.require_trusted_servers()
    options = ClientSettings.from_args(args)
    token = load_token(settings)
    load_webhook_secret(settings)  # refuse a bad secret file now, not after logging in
    configure_logging(settings.log_level)
    point_discord_at(settings.discord_api_base, settings.discord_gateway_url)
    asyncio.run(run_bot(settings, swarm, options, token))
    return 0
