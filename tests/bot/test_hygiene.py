"""Conversation hygiene against the fake Discord: only replies to answers continue a
conversation, a mention on a reply asks about the replied-to message, text attachments are
read (bounded) and other files are named, older turns left out are said."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bot.helpers import (
    CHANNEL,
    ScriptedEngine,
    answers_in,
    final,
    final_reply,
    make_bot,
)
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot


async def test_a_reply_to_help_text_is_not_a_question(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine()
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, engine), fake):
        await fake.push_message(channel, alice, "!help")
        help_post = await fake.wait_for(lambda: answers_in(fake, channel), what="help text")
        await fake.push_message(channel, alice, "thanks!", reference=int(help_post[0]["id"]))
        # A question after it shows the bot has handled the reply (in order) by then.
        asked = await fake.push_message(channel, alice, "!When is the exam?")
        await final_reply(fake, asked)
    assert len(engine.prompts) == 1
    assert engine.prompts[0][-1]["content"].endswith("When is the exam?")


async def test_a_mention_on_a_reply_asks_about_the_replied_message(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine()
    channel, alice, bob = fake.channel_ids[CHANNEL], fake.user_ids["alice"], fake.user_ids["bob"]
    async with running(make_bot(tmp_path, engine), fake):
        said = await fake.push_message(channel, bob, "I think recursion needs a base case.")
        asked = await fake.push_message(
            channel, alice, f"<@{fake.bot_user_id}> is that right?", reference=said
        )
        await final_reply(fake, asked)
    question = engine.prompts[0][-1]["content"]
    assert "About this message from bob:\n> I think recursion needs a base case." in question
    assert question.endswith("is that right?")


async def test_text_attachments_are_read_and_others_named(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine()
    channel, carol = fake.channel_ids[CHANNEL], fake.user_ids["carol"]
    files = {
        "loop.py": b"for i in range(3):\n    print(i)\n",
        "photo.png": b"\x89PNG\r\n",
        "huge.txt": b"x" * 30_000,
    }
    async with running(make_bot(tmp_path, engine), fake):
        asked = await fake.push_message(channel, carol, "!Why does this print 0 1 2?", files=files)
        reply = await final_reply(fake, asked)
    question = engine.prompts[0][-1]["content"]
    assert "Attached file loop.py:\n```\nfor i in range(3):\n    print(i)\n```" in question
    assert "PNG" not in question and "xxxx" not in question
    assert final(reply["content"])
    assert "📎 not read: photo.png (not a text file), huge.txt (over 20 kB)" in reply["content"]


async def test_older_turns_left_out_are_said(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    fake = fake_discord
    engine = ScriptedEngine("An answer that is fairly long. " * 40, context_window=700)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, engine, max_new_tokens=100), fake):
        previous = await fake.push_message(channel, alice, "!Tell me about sorting?")
        for follow_up in ("And merge sort?", "And quicksort?"):
            answer = await final_reply(fake, previous)
            previous = await fake.push_message(
                channel, alice, follow_up, reference=int(answer["id"])
            )
        last = await final_reply(fake, previous)
    assert "older turn(s) left out" in last["content"]
    assert len(engine.prompts[-1]) < 1 + 2 * 2 + 1  # not every earlier turn went in
