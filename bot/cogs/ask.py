"""Asking: ``!ask``/``!<question>`` (routed by the bot), ``!thread``, and ``/ask`` with an optional
thread in which every later message continues the conversation without pressing reply."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.answering import Question, Target
from bot.conversation import NEW, Context
from bot.store import Store

if TYPE_CHECKING:
    from bot.app import CourseBot

THREAD_ARCHIVE_MINUTES: Literal[1440] = 1440  # a day, one of Discord's four choices


def thread_name(question: str) -> str:
    line = " ".join(question.split())[:90]
    return line or "question"


class AskCog(commands.Cog, name="ask"):
    def __init__(self, bot: CourseBot) -> None:
        self.bot = bot

    @commands.command(name="ask", help="ask the course assistant a question")
    async def ask_prefix(self, ctx: commands.Context[CourseBot], *, question: str = "") -> None:
        await self.bot.ask_in_channel(ctx.message, question, "prefix", NEW)

    @commands.command(name="thread", help="ask in a new thread; reply there without the prefix")
    async def thread_prefix(self, ctx: commands.Context[CourseBot], *, question: str = "") -> None:
        message = ctx.message
        if isinstance(message.channel, discord.Thread):  # already in one: just continue
            await self.bot.route_question(message)
            return
        holder: dict[str, discord.Thread] = {}
        asked = self._question(question, "prefix", ctx.author, message.channel, message.id)
        opening = asyncio.Lock()

        async def opened() -> discord.Thread:
            # Once per question: in A/B mode both answers go to the same thread (Discord
            # refuses a second thread on one message, code 160004).
            async with opening:
                if "thread" not in holder:
                    thread = await message.create_thread(
                        name=thread_name(question), auto_archive_duration=THREAD_ARCHIVE_MINUTES
                    )
                    holder["thread"] = thread
                    await self._register(thread, asked)
            return holder["thread"]

        async def first(content: str) -> Any:
            return await (await opened()).send(content)

        async def more(content: str) -> Any:
            return await (await opened()).send(content)

        async def reject(line: str) -> None:
            with contextlib.suppress(discord.HTTPException):
                await message.reply(line, mention_author=False)

        await self.bot.answers.ask(asked, lambda index: Target(first, more, reject, fallback=more))

    @app_commands.command(
        name="ask", description="Ask the course assistant (runs on the course's own GPUs)"
    )
    @app_commands.describe(
        question="your question (course facts or anything else)",
        thread="open a thread: every message there continues the conversation",
    )
    async def ask_slash(
        self, interaction: discord.Interaction, question: str, thread: bool = False
    ) -> None:
        bot = self.bot
        channel = interaction.channel
        if not bot.allowed(channel):
            where = bot.answer_channel(interaction.guild)
            line = f"I answer questions in <#{where}>." if where else "I don't answer here."
            await interaction.response.send_message(line, ephemeral=True)
            return
        context: Context = NEW
        thread = thread and not isinstance(channel, discord.Thread)  # no threads in threads
        if isinstance(channel, discord.Thread) and await bot.store.run(Store.is_thread, channel.id):
            turns, last = await bot.store.run(
                Store.thread_history, channel.id, bot.settings.max_history_turns
            )
            context = Context(turns, last, None, channel.id)
        asked = self._question(question, "slash", interaction.user, channel, None, context)
        holder: dict[str, Any] = {}

        async def first(content: str) -> Any:
            if not thread:
                await interaction.response.send_message(content)
                return await interaction.original_response()
            opener = f"🧵 **{interaction.user.display_name}** asked: {question[:1800]}"
            await interaction.response.send_message(opener)
            starter = await interaction.original_response()
            opened = await starter.create_thread(
                name=thread_name(question), auto_archive_duration=THREAD_ARCHIVE_MINUTES
            )
            holder["thread"] = opened
            await self._register(opened, asked)
            return await opened.send(content)

        async def more(content: str) -> Any:
            if "thread" in holder:
                return await holder["thread"].send(content)
            return await interaction.followup.send(content, wait=True)

        async def reject(line: str) -> None:
            with contextlib.suppress(discord.HTTPException):
                if interaction.response.is_done():
                    await interaction.followup.send(line, ephemeral=True)
                else:
                    await interaction.response.send_message(line, ephemeral=True)

        async def fallback(content: str) -> Any:
            place: Any = holder.get("thread") or channel
            return await place.send(content)

        def reroute(message: Any) -> Any:
            # The interaction token expired (15 minutes): the bot's own message can still be
            # edited through the channel's route.
            place = holder.get("thread") or channel
            getter = getattr(place, "get_partial_message", None)
            return getter(message.id) if getter is not None else None

        def target(index: int) -> Target:
            if index == 0:
                return Target(first, more, reject, fallback=fallback, reroute=reroute)
            # A/B: the second answer always follows up (in the thread when there is one).
            return Target(more, more, reject, fallback=fallback, reroute=reroute)

        await bot.answers.ask(asked, target)

    def _question(
        self,
        text: str,
        kind: str,
        user: discord.abc.User,
        channel: Any,
        message_id: int | None,
        context: Context = NEW,
    ) -> Question:
        guild = getattr(channel, "guild", None)
        return Question(
            text=text,
            kind=kind,
            user_id=user.id,
            user_name=user.display_name,
            guild_id=guild.id if guild else None,
            channel_id=channel.id,
            message_id=message_id,
            context=context,
        )

    async def _register(self, thread: discord.Thread, question: Question) -> None:
        """Make ``thread`` a conversation: later messages there continue it."""
        await self.bot.store.run(
            Store.add_thread, thread.id, question.guild_id, question.channel_id, question.user_id
        )
        question.context = Context(thread_id=thread.id)


async def setup(bot: CourseBot) -> None:
    await bot.add_cog(AskCog(bot))
