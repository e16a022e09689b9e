"""Build the bot from its settings and run it until SIGTERM/SIGINT (used by ``petalctl bot``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.app import CourseBot
from bot.engine import ClientEngine
from bot.errors import TokenError
from bot.settings import BotSettings
from bot.store import Store
from client import ClientSettings
from swarm.errors import ConfigError
from swarm.swarm_settings import SwarmSettings

log = logging.getLogger("bot")


def point_discord_at(api_base: str | None, gateway_url: str | None) -> None:
    """Send discord.py's REST calls and gateway connection elsewhere (tests: a fake Discord).

    discord.py builds every REST URL from ``Route.BASE`` and a plain client dials
    ``DiscordWebSocket.DEFAULT_GATEWAY`` without asking GET /gateway, so these two suffice.
    """
    if api_base:
        Route.BASE = api_base
    if gateway_url:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("discord").setLevel(max(logging.INFO, logging.getLevelName(level)))


def build_engines(
    settings: BotSettings, swarm: SwarmSettings, options: ClientSettings
) -> tuple[ClientEngine, ClientEngine | None]:
    """The main model's engine and, in A/B mode, the second model's (same private swarm)."""

    def engine(for_swarm: SwarmSettings) -> ClientEngine:
        return ClientEngine(
            for_swarm,
            options,
            stop_sequences=settings.stop_sequences,
            temperature=settings.temperature,
            top_p=settings.top_p,
        )

    ab = None
    if settings.ab_model:
        other = swarm.model_copy(
            update={"model": settings.ab_model, "dht_prefix": settings.ab_dht_prefix}
        )
        ab = engine(other)
    return engine(swarm), ab


async def run_bot(
    settings: BotSettings, swarm: SwarmSettings, options: ClientSettings, token: str
) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # petals forks its DHT process
    store = Store(settings.database)
    engine, ab_engine = build_engines(settings, swarm, options)
    bot = CourseBot(settings, engine, store, ab_engine=ab_engine)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stopping.append(asyncio.ensure_future(bot.close())))
    try:
        async with bot:
            await bot.start(token)
    except discord.LoginFailure:
        raise TokenError(
            "Discord refused the bot token (401); reset it in the developer portal"
        ) from None
    except discord.PrivilegedIntentsRequired:
        raise ConfigError(
            "Discord refused the connection: enable the MESSAGE CONTENT intent for the bot in the "
            "developer portal (Bot → Privileged Gateway Intents)"
        ) from None
    finally:
        for task in stopping:
            with contextlib.suppress(Exception):
                await task
