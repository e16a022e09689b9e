"""Administration: /setup (create or adopt the bot's own channel and answer only there, so nobody
has to remove the bot from channels by hand), /reload (re-index the course files) and help."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs import app_moderator_only, moderator_default_permissions, moderator_only
from bot.formatting import help_text
from bot.store import Store

if TYPE_CHECKING:
    from bot.app import CourseBot

log = logging.getLogger(__name__)

BOT_CHANNEL_PERMISSIONS = discord.PermissionOverwrite(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    read_message_history=True,
    add_reactions=True,
    embed_links=True,
)


class AdminCog(commands.Cog, name="admin"):
    def __init__(self, bot: CourseBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="setup", description="Moderators: answer only in one channel (created if needed)"
    )
    @app_commands.describe(
        channel="an existing channel to adopt (default: find or create the bot's channel)",
        everywhere="lift the limit: answer in every channel again",
    )
    @app_moderator_only()
    @moderator_default_permissions
    async def setup_channel(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel | None = None,
        everywhere: bool = False,
    ) -> None:
        bot, guild = self.bot, interaction.guild
        if guild is None:
            await interaction.response.send_message("Use /setup in a server.", ephemeral=True)
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        if everywhere:
            await bot.store.run(Store.set_channel, guild.id, None, interaction.user.id)
            bot.chosen_channels.pop(guild.id, None)
            await interaction.followup.send("I answer in every channel again.", ephemeral=True)
            return
        how = "adopted"
        if channel is None:
            name = bot.settings.setup_channel_name
            channel = discord.utils.get(guild.text_channels, name=name)
            if channel is None:
                # The overwrite for the bot itself keeps it from locking itself out of a
                # channel whose @everyone permissions a moderator tightens later.
                channel = await guild.create_text_channel(
                    name,
                    topic="Ask the course assistant: start with "
                    f"{bot.settings.command_prefix} or use /ask",
                    overwrites={guild.me: BOT_CHANNEL_PERMISSIONS},
                    reason=f"/setup by {interaction.user}",
                )
                how = "created"
        missing = self._missing_permissions(channel, guild.me)
        if missing:
            try:
                await channel.set_permissions(guild.me, overwrite=BOT_CHANNEL_PERMISSIONS)
            except discord.HTTPException:
                await interaction.followup.send(
                    f"I cannot use {channel.mention}: I lack {', '.join(missing)} there and may "
                    "not change its permissions. Give me those and run /setup again.",
                    ephemeral=True,
                )
                return
        await bot.store.run(Store.set_channel, guild.id, channel.id, interaction.user.id)
        bot.chosen_channels[guild.id] = channel.id
        log.info("guild %d: answering only in channel %d (%s)", guild.id, channel.id, how)
        await channel.send(help_text(bot.settings.command_prefix, channel.mention))
        await interaction.followup.send(
            f"From now on I answer only in {channel.mention} ({how}).", ephemeral=True
        )

    @staticmethod
    def _missing_permissions(channel: discord.TextChannel, me: discord.Member) -> list[str]:
        have = channel.permissions_for(me)
        needed = ("view_channel", "send_messages", "read_message_history", "add_reactions")
        return [name for name in needed if not getattr(have, name)]

    @commands.hybrid_command(name="reload", description="Moderators: re-read the course files")
    @moderator_only()
    @moderator_default_permissions
    async def reload(self, ctx: commands.Context[CourseBot]) -> None:
        index = await self.bot.reload_knowledge()
        if index is None:
            await ctx.send("No course folder is configured (course_dir).", ephemeral=True)
        else:
            await ctx.send(f"📚 Course knowledge reloaded: {index.summary()}.", ephemeral=True)

    @commands.hybrid_command(name="help", description="How to ask the course assistant")  # type: ignore[arg-type]
    async def help(self, ctx: commands.Context[CourseBot]) -> None:
        where = self.bot.answer_channel(ctx.guild)
        await ctx.send(
            help_text(self.bot.settings.command_prefix, f"<#{where}>" if where else None),
            ephemeral=True,
        )


async def setup(bot: CourseBot) -> None:
    await bot.add_cog(AdminCog(bot))
