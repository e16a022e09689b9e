"""Message flows with dpytest 0.7.0 (prefix commands and reactions; it has no interactions).

Adjustments dpytest needs with discord.py 2.7: the bot's async setup hook runs before
``dpytest.configure``, the members intent is on, and command errors are raised by
``dpytest.message`` (so a refused moderator command is asserted with ``pytest.raises``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import discord
import discord.ext.test as dpytest
import pytest
import pytest_asyncio
from discord.ext.test import backend, factories

from bot.app import CourseBot, default_intents
from bot.cogs import NotModerator
from bot.store import Store
from tests.bot.helpers import ScriptedEngine, make_bot

pytestmark = pytest.mark.bot

ANSWER = "Lab sessions are on Wednesdays and Thursdays."


@pytest_asyncio.fixture
async def dpy(tmp_path: Path) -> AsyncIterator[tuple[CourseBot, ScriptedEngine]]:
    engine = ScriptedEngine(ANSWER, piece_chars=10)
    intents = default_intents()
    intents.members = True  # dpytest builds its guild from members
    bot = make_bot(
        tmp_path,
        engine,
        intents=intents,
        sync_commands=False,
        edit_interval_s=0.05,
        add_rating_reactions=False,
        rate_limit_count=3,
    )
    await bot._async_setup_hook()  # discord.py's loop setup; dpytest does not call it
    await bot.setup_hook()
    dpytest.configure(bot, members=["alice", "bob"])
    yield bot, engine
    await dpytest.empty_queue()
    bot.store.close()


def sent() -> list[discord.Message]:
    messages = []
    while not dpytest.sent_queue.empty():
        messages.append(dpytest.get_message())
    return messages


async def react(member: discord.Member, message: discord.Message, emoji: str) -> None:
    """dpytest.add_reaction without its bug: discord.py 2.7 reads a reaction event's "type"
    (normal or burst), which dpytest 0.7.0 leaves out, so the event is built here."""
    event = {
        "message_id": message.id,
        "channel_id": message.channel.id,
        "guild_id": member.guild.id,
        "user_id": member.id,
        "emoji": {"id": None, "name": emoji},
        "member": factories.dict_from_member(member),
        "burst": False,
        "type": 0,
    }
    backend.get_state().parse_message_reaction_add(event)
    await dpytest.run_all_events()


async def content_now(message: discord.Message) -> str:
    """The message's content after the bot's edits (dpytest keeps them in its channel log)."""
    fetched = await message.channel.fetch_message(message.id)
    return fetched.content


async def test_question_gets_a_placeholder_then_the_answer(
    dpy: tuple[CourseBot, ScriptedEngine],
) -> None:
    bot, engine = dpy
    await dpytest.message("!When are the lab sessions?")
    (reply,) = sent()
    assert reply.content == "🧠"  # posted at once, then edited
    final = await content_now(reply)
    assert final.startswith(ANSWER + "\n-# ⏱") and "scripted-model" in final
    assert engine.prompts[0][-1]["content"].endswith(" asks: When are the lab sessions?")
    assert bot.metrics.value("petals_bot_questions_total", kind="prefix") == 1


async def test_ask_command_and_mention_are_questions_too(
    dpy: tuple[CourseBot, ScriptedEngine],
) -> None:
    bot, engine = dpy
    await dpytest.message("!ask what is CSS grid")
    assert bot.user is not None
    await dpytest.message(f"<@{bot.user.id}> what is flexbox?")
    asked = [p[-1]["content"].split(" asks: ", 1)[1] for p in engine.prompts]
    assert asked == ["what is CSS grid", "what is flexbox?"]


@pytest.mark.parametrize(
    ("content", "reply"),
    [
        ("!", "Ask me a question after `!`"),
        ("!ask", "Ask me a question after `!`"),
        ("!" + "a" * 10_000, "10,000 characters long; the limit is 2,000"),
        ("!" + "why " * 2500, "9,999 characters long; the limit is 2,000"),
        ("!frobnicate", "I don't know the command `!frobnicate`"),
    ],
)
async def test_bad_input_gets_one_short_reply(
    dpy: tuple[CourseBot, ScriptedEngine], content: str, reply: str
) -> None:
    _, engine = dpy
    await dpytest.message(content)
    (only,) = sent()
    assert reply in only.content and len(only.content) < 300
    assert engine.prompts == []


async def test_plain_chat_and_other_bots_are_ignored(dpy: tuple[CourseBot, ScriptedEngine]) -> None:
    _, engine = dpy
    config = dpytest.get_config()
    state = backend.get_state()
    other = state.store_user(factories.make_user_dict("otherbot", 1, None, bot=True))
    other_member = backend.make_member(other, config.guilds[0])
    await dpytest.message("!When is the exam?", member=other_member)
    await dpytest.message("no prefix, just talking")
    assert sent() == [] and engine.prompts == []


async def test_rate_limit_per_user(dpy: tuple[CourseBot, ScriptedEngine]) -> None:
    _, engine = dpy
    for _ in range(3):
        await dpytest.message("!a question?", member=0)
    await dpytest.message("!one too many?", member=0)
    await dpytest.message("!someone else?", member=1)
    replies = [m.content for m in sent()]
    assert len(engine.prompts) == 4
    assert sum("Please wait" in r for r in replies) == 1


async def test_breakall_is_for_moderators_and_stop_has_nothing_to_stop(
    dpy: tuple[CourseBot, ScriptedEngine],
) -> None:
    await dpytest.message("!stop")
    assert "no answer being written" in sent()[0].content
    with pytest.raises(NotModerator, match="Only moderators"):
        await dpytest.message("!breakall")
    assert "Only moderators" in sent()[0].content  # the error handler still told the student


async def test_thumbs_up_is_stored(dpy: tuple[CourseBot, ScriptedEngine]) -> None:
    bot, _ = dpy
    await dpytest.message("!rate this?")
    (answer,) = sent()
    config = dpytest.get_config()
    await react(config.members[1], answer, "👍")
    await react(config.members[0], answer, "👎")
    await react(config.members[0], answer, "🎉")
    ratings = await bot.store.run(Store.ratings, answer.id)
    assert ratings == {config.members[1].id: 1, config.members[0].id: -1}
