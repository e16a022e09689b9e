"""Which conversation a message continues: a reply to an answer (the reference chain, from the
database, or from Discord itself for answers the database does not know) or a message in a
conversation thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import discord

from bot.formatting import SUBTEXT, strip_footer
from bot.prompt import Turn
from bot.store import AsyncStore, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where a question sits: its earlier turns and the answer it follows up."""

    history: list[Turn] = field(default_factory=list)
    parent_id: int | None = None  # the answer this follows up (database id)
    model: str | None = None  # the model that gave that answer (A/B: continue with it)
    thread_id: int | None = None


NEW = Context()


async def referenced_message(message: discord.Message) -> discord.Message | None:
    """The message ``message`` replies to (from the cache or fetched), or None."""
    return await _referenced(message)


async def _referenced(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    if isinstance(reference.resolved, discord.Message):
        return reference.resolved
    try:
        return await message.channel.fetch_message(reference.message_id)
    except discord.HTTPException:
        return None


def _question_text(content: str, prefix: str, bot_id: int) -> str:
    text = content.strip()
    for mention in (f"<@{bot_id}>", f"<@!{bot_id}>"):
        text = text.replace(mention, "")
    text = text.strip()
    return text[len(prefix) :].strip() if text.startswith(prefix) else text


async def discord_chain(
    answer: discord.Message, *, bot_id: int, prefix: str, max_turns: int
) -> list[Turn]:
    """Turns rebuilt by following Discord's references: answer -> question -> answer -> ..."""
    turns: list[Turn] = []
    current: discord.Message | None = answer
    while current is not None and len(turns) < max_turns:
        if current.author.id != bot_id or SUBTEXT not in current.content:
            break
        question = await _referenced(current)
        if question is None:
            break
        turns.append(
            Turn(_question_text(question.content, prefix, bot_id), strip_footer(current.content))
        )
        current = await _referenced(question)
    return turns[::-1]


async def context_for(
    message: discord.Message, store: AsyncStore, *, bot_id: int, prefix: str, max_turns: int
) -> Context | None:
    """The conversation ``message`` continues, or None when it starts none (not a reply to an
    answer, not in a conversation thread)."""
    channel = message.channel
    if isinstance(channel, discord.Thread) and await store.run(Store.is_thread, channel.id):
        turns, last = await store.run(Store.thread_history, channel.id, max_turns)
        return Context(turns, last, None, channel.id)
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    record = await store.run(Store.answer_for_message, reference.message_id)
    if record is not None:
        turns = await store.run(Store.history, record.id, max_turns)
        return Context(turns, record.id, record.model, record.thread_id)
    referenced = await _referenced(message)
    if referenced is None or referenced.author.id != bot_id:
        return None
    turns = await discord_chain(referenced, bot_id=bot_id, prefix=prefix, max_turns=max_turns)
    if not turns:  # a reply to help text, a notice or an alert post: not an answer
        return None
    log.info("continuing a conversation the database does not know (%d turn(s))", len(turns))
    return Context(turns)
