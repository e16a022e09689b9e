"""Control: /stop (your own answers), /breakall (moderators: every answer, at once, for real) and
/status (the swarm's coverage from the health service)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from discord.ext import commands

from bot.cogs import moderator_default_permissions, moderator_only
from bot.reports import status_text

if TYPE_CHECKING:
    from bot.app import CourseBot

STATUS_TIMEOUT_S = 5.0


class ControlCog(commands.Cog, name="control"):
    def __init__(self, bot: CourseBot) -> None:
        self.bot = bot

    @commands.hybrid_command(name="stop", description="Stop your answer that is being written")  # type: ignore[arg-type]
    async def stop(self, ctx: commands.Context[CourseBot]) -> None:
        stopped = self.bot.jobs.cancel_user(ctx.author.id, by=ctx.author.display_name)
        line = (
            f"⏹ Stopped {len(stopped)} answer(s) of yours."
            if stopped
            else "You have no answer being written."
        )
        await ctx.send(line, ephemeral=True)

    @commands.hybrid_command(name="breakall", description="Moderators: stop every answer now")
    @moderator_only()
    @moderator_default_permissions
    async def breakall(self, ctx: commands.Context[CourseBot]) -> None:
        stopped = self.bot.jobs.cancel_all(by=ctx.author.display_name)
        await ctx.send(f"⏹ Stopped {len(stopped)} answer(s).")

    @commands.hybrid_command(name="status", description="Is the whole model served by the swarm?")  # type: ignore[arg-type]
    async def status(self, ctx: commands.Context[CourseBot]) -> None:
        await ctx.defer()
        url = self.bot.settings.status_url
        timeout = aiohttp.ClientTimeout(total=STATUS_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers={"Accept": "application/json"}) as response,
            ):
                if response.status not in (200, 503):
                    line = f"⚠️ The health service answered HTTP {response.status}."
                else:
                    line = status_text(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = (
                type(exc).__name__
                if isinstance(exc, TimeoutError)
                else str(exc) or type(exc).__name__
            )
            line = f"⚠️ The health service at {url} did not answer ({reason})."
        await ctx.send(line)


async def setup(bot: CourseBot) -> None:
    await bot.add_cog(ControlCog(bot))
