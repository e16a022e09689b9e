"""Point the unmodified discord.py client at a FakeDiscord, and run a bot against it.

discord.py builds every REST URL (webhooks and interaction callbacks included) from the class
attribute ``Route.BASE``, and a plain ``Client`` dials ``DiscordWebSocket.DEFAULT_GATEWAY``
without asking GET /gateway (only AutoShardedClient asks), so those two attributes are all
that needs to change. Both are restored on exit, also when the body raises.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from tests.fakediscord.server import FakeDiscord

ClientT = TypeVar("ClientT", bound=discord.Client)


@contextlib.contextmanager
def pointed_at(fake: FakeDiscord) -> Iterator[None]:
    """Send discord.py's REST calls and gateway connection to ``fake`` while inside."""
    saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = fake.api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


@contextlib.asynccontextmanager
async def running(
    bot: ClientT,
    fake: FakeDiscord,
    *,
    token: str | None = None,
    ready_timeout: float = 10.0,
    close_timeout: float = 10.0,
) -> AsyncIterator[ClientT]:
    """Start ``bot`` on the current loop, yield once it is ready, close it on exit.

    Startup errors (a bad token, disallowed intents) are raised here rather than left in a
    background task. Build the bot with a small ``guild_ready_timeout`` (e.g. 0.1): discord.py
    waits that long after the last GUILD_CREATE before it dispatches on_ready (default 2 s).
    """
    task = asyncio.create_task(bot.start(token or fake.token), name="fake-discord-bot")
    try:
        # Polled: wait_until_ready() refuses to run before login has set up the client.
        async with asyncio.timeout(ready_timeout):
            while not bot.is_ready():
                if task.done():
                    task.result()  # raises the startup error
                    raise RuntimeError("bot.start() returned before the bot became ready")
                await asyncio.wait({task}, timeout=0.02)
        yield bot
    finally:
        async with asyncio.timeout(close_timeout):  # a bot that will not stop fails, not hangs
            await bot.close()
            with contextlib.suppress(asyncio.CancelledError):
                await task
