"""Feedback: 👍/👎 under an answer stored durably (then acknowledged in the log and the
``petals_bot_ratings_total`` counter), /stats and /export (CSV) for moderators."""

from __future__ import annotations

import csv
import io
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs import app_moderator_only, moderator_default_permissions, moderator_only
from bot.reports import stats_text
from bot.store import Store

if TYPE_CHECKING:
    from bot.app import CourseBot

log = logging.getLogger(__name__)


def rating_of(emoji: discord.PartialEmoji) -> int | None:
    """+1 for 👍, -1 for 👎 (any skin tone), None for other reactions."""
    if emoji.id is not None or not emoji.name:
        return None
    if emoji.name.startswith("👍"):
        return 1
    if emoji.name.startswith("👎"):
        return -1
    return None


class FeedbackCog(commands.Cog, name="feedback"):
    def __init__(self, bot: CourseBot) -> None:
        self.bot = bot

    def _counts(self, payload: discord.RawReactionActionEvent) -> int | None:
        bot = self.bot
        if bot.user is None or payload.user_id == bot.user.id:
            return None
        if payload.member is not None and payload.member.bot:
            return None
        return rating_of(payload.emoji)

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        rating = self._counts(payload)
        if rating is None:
            return
        answer_id = await self.bot.store.run(
            Store.rate, payload.message_id, payload.user_id, rating
        )
        if answer_id is None:
            return  # not one of the bot's answers
        label = "up" if rating > 0 else "down"
        self.bot.metrics.ratings.labels(label).inc()
        log.info("rating stored: answer %d %s", answer_id, label)

    @commands.Cog.listener()
    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        rating = rating_of(payload.emoji)
        if rating is None or (self.bot.user and payload.user_id == self.bot.user.id):
            return
        answer_id = await self.bot.store.run(
            Store.unrate, payload.message_id, payload.user_id, rating
        )
        if answer_id is not None:
            self.bot.metrics.ratings.labels("removed").inc()
            log.info("rating removed: answer %d", answer_id)

    @commands.hybrid_command(name="stats", description="Moderators: answers, ratings, speed, A/B")
    @moderator_only()
    @moderator_default_permissions
    async def stats(self, ctx: commands.Context[CourseBot]) -> None:
        stats = await self.bot.store.run(Store.stats)
        await ctx.send(stats_text(stats), ephemeral=True)

    @app_commands.command(name="export", description="Moderators: every answer and rating as CSV")
    @app_moderator_only()
    @moderator_default_permissions
    async def export(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        text = await self.bot.store.run(Store.export_csv)
        rows = len(list(csv.reader(io.StringIO(text)))) - 1
        upload = discord.File(io.BytesIO(text.encode("utf-8")), filename="course-bot-answers.csv")
        await interaction.followup.send(f"{rows} answer(s).", file=upload, ephemeral=True)


async def setup(bot: CourseBot) -> None:
    await bot.add_cog(FeedbackCog(bot))
