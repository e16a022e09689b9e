"""One cog per area: ask (questions), control (/stop, /breakall, /status), feedback (ratings,
/stats, /export), admin (/setup, /reload, help)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.app import CourseBot

MODERATORS_ONLY = "Only moderators can use this command."
# Discord hides a command whose default permissions a member lacks (server admins can grant it
# to roles under Server Settings > Integrations). Manage Messages is a moderator's permission.
# It only hides: the check below (role ids, or names) still decides.
moderator_default_permissions = app_commands.default_permissions(manage_messages=True)


class NotModerator(commands.CheckFailure, app_commands.CheckFailure):
    """Raised by the moderator checks; its text is the reply."""


def moderator_only() -> Any:
    """A check for hybrid and prefix commands: administrators or a moderator role."""

    async def predicate(ctx: commands.Context[CourseBot]) -> bool:
        if not ctx.bot.is_moderator(ctx.author):
            raise NotModerator(MODERATORS_ONLY)
        return True

    return commands.check(predicate)


def app_moderator_only() -> Any:
    """The same check for slash-only commands."""

    async def predicate(interaction: discord.Interaction) -> bool:
        bot = interaction.client
        if not getattr(bot, "is_moderator", lambda user: False)(interaction.user):
            raise NotModerator(MODERATORS_ONLY)
        return True

    return app_commands.check(predicate)
