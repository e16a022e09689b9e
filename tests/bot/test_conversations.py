"""Follow-ups with a scripted engine: replies follow the reference chain, threads continue
without replying, course passages and their files go into the prompt and the footer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from bot.prompt import ChatMessage
from tests.bot.helpers import (
    CHANNEL,
    ScriptedEngine,
    answer_text,
    answers_in,
    bot_reply_to,
    final,
    final_reply,
    make_bot,
)
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot
COURSE = Path(__file__).parent / "course"


def numbered(messages: Sequence[ChatMessage]) -> str:
    """Answer n for the n-th user message, so each turn is recognisable."""
    return f"Answer number {sum(m['role'] == 'user' for m in messages)}."


async def test_replies_continue_the_conversation_along_the_chain(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine(numbered)
    channel, alice, bob = fake.channel_ids[CHANNEL], fake.user_ids["alice"], fake.user_ids["bob"]
    async with running(make_bot(tmp_path, engine), fake) as bot:
        first = await fake.push_message(channel, alice, "!What is Flask?")
        answer1 = int((await final_reply(fake, first))["id"])
        # A reply needs no prefix; anyone may continue.
        second = await fake.push_message(channel, bob, "And Jinja?", reference=answer1)
        answer2 = int((await final_reply(fake, second))["id"])
        third = await fake.push_message(channel, alice, "!Give an example", reference=answer2)
        await final_reply(fake, third)
        fresh = await fake.push_message(channel, alice, "!Unrelated new question?")
        await final_reply(fake, fresh)
        await fake.wait_for(lambda: len(bot.jobs) == 0)
    assert [m["content"] for m in engine.prompts[2][1:]] == [
        "What is Flask?",
        "Answer number 1.",
        "And Jinja?",
        "Answer number 2.",
        "alice asks: Give an example",
    ]
    assert len(engine.prompts[3]) == 2  # system + the new question: no earlier turns
    assert answer_text(bot_reply_to(fake, third)[0]["content"]) == "Answer number 3."


async def test_reply_to_an_answer_the_database_does_not_know(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine(numbered)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, engine), fake):
        first = await fake.push_message(channel, alice, "!Who teaches?")
        answer1 = int((await final_reply(fake, first))["id"])
    # A new bot with an empty database: the chain is rebuilt from Discord's references.
    async with running(make_bot(tmp_path / "fresh", engine), fake):
        second = await fake.push_message(channel, alice, "Email?", reference=answer1)
        await final_reply(fake, second)
    assert [m["content"] for m in engine.prompts[1][1:]] == [
        "Who teaches?",
        "Answer number 1.",
        "alice asks: Email?",
    ]


async def test_slash_ask_in_a_thread_continues_without_reply(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine(numbered)
    channel, carol = fake.channel_ids[CHANNEL], fake.user_ids["carol"]
    async with running(make_bot(tmp_path, engine), fake) as bot:
        options = {"question": "How do I start the project?", "thread": True}
        record = fake.interaction(await fake.push_interaction("ask", options, carol, channel))
        thread = (await fake.wait_for(lambda: fake.threads_in(channel), what="a thread"))[0]
        thread_id = int(thread["id"])
        await fake.wait_for(lambda: any(final(m["content"]) for m in answers_in(fake, thread_id)))
        await fake.push_message(thread_id, carol, "Who should be in my group?")
        await fake.wait_for(
            lambda: len([m for m in answers_in(fake, thread_id) if final(m["content"])]) == 2
        )
        await fake.push_message(thread_id, fake.user_ids["alice"], "can I join?")
        await fake.wait_for(
            lambda: len([m for m in answers_in(fake, thread_id) if final(m["content"])]) == 3
        )
        await fake.wait_for(lambda: len(bot.jobs) == 0)
    assert thread["name"] == "How do I start the project?"
    assert int(thread["id"]) == record.original_message_id  # started from the response
    assert "carol** asked: How do I start the project?" in fake.message(thread_id)["content"]
    assert [m["content"] for m in engine.prompts[2][1:]] == [
        "How do I start the project?",
        "Answer number 1.",
        "Who should be in my group?",
        "Answer number 2.",
        "alice asks: can I join?",
    ]


async def test_prefix_thread_command_opens_a_conversation_thread(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine(numbered)
    channel, bob = fake.channel_ids[CHANNEL], fake.user_ids["bob"]
    async with running(make_bot(tmp_path, engine), fake):
        asked = await fake.push_message(channel, bob, "!thread Help with CSS grid")
        thread_id = int((await fake.wait_for(lambda: fake.threads_in(channel)))[0]["id"])
        assert thread_id == asked  # started from the student's message
        await fake.wait_for(lambda: any(final(m["content"]) for m in answers_in(fake, thread_id)))
        await fake.push_message(thread_id, bob, "and flexbox?")
        await fake.wait_for(
            lambda: len(engine.prompts) == 2 and len(answers_in(fake, thread_id)) == 2
        )
    assert engine.prompts[1][-3]["content"] == "Help with CSS grid"


async def test_course_passages_go_into_the_prompt_and_the_footer(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine("The exam is on 3 June [exams.md].")
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, engine, course_dir=COURSE), fake) as bot:
        assert bot.knowledge is not None and bot.knowledge.passages > 10
        asked = await fake.push_message(channel, alice, "!When is the written exam?")
        reply = await final_reply(fake, asked)
    system, asked = engine.prompts[0][0]["content"], engine.prompts[0][-1]["content"]
    assert "3 June" not in system  # course text is quoted in the question, not system text
    assert "> [exams.md › Exam › Exam date and place]" in asked
    assert "3 June at 09:00" in asked and asked.endswith("alice asks: When is the written exam?")
    assert "📚 exams.md" in reply["content"]
