"""The real discord.py client running CourseBot against the fake Discord, with a scripted engine
(no swarm): placeholders, throttled streaming, splitting, slash commands, control, queueing,
rate limits, threads, /setup, /status, ratings, A/B, bad input."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from bot.errors import SwarmDown
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


async def test_prefix_question_streams_by_throttled_edits(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    text = "The written exam is on 3 June at 09:00 in the sports hall. " * 3
    engine = ScriptedEngine(text, piece_chars=6, delay_s=0.05)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, engine, edit_interval_s=0.3), fake):
        asked = await fake.push_message(channel, alice, "!When is the exam?")
        reply = await final_reply(fake, asked)
    revisions = fake.revisions_of(int(reply["id"]))
    assert revisions[0].content == "🧠"
    assert len(revisions) >= 4, [r.content for r in revisions]  # placeholder, edits, final
    assert answer_text(revisions[-1].content) == text.strip()
    assert final(revisions[-1].content) and "scripted-model" in revisions[-1].content
    assert "writing…" in revisions[1].content  # streaming shows a writing footer
    gaps = [b.at - a.at for a, b in itertools.pairwise(revisions[:-1])]  # the last comes at once
    assert all(gap >= 0.28 for gap in gaps), gaps  # about one edit per interval, not per token
    assert engine.prompts[0][-1] == {"role": "user", "content": "alice asks: When is the exam?"}
    sent = fake.calls_to("POST /channels/{channel_id}/messages")[0].json
    assert (
        sent["allowed_mentions"]["parse"] == []
        and sent["allowed_mentions"]["replied_user"] is False
    )


async def test_long_answers_continue_in_new_messages(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    paragraph = "Flask routes map URLs to Python functions that return responses. " * 8
    text = "\n\n".join([paragraph.strip()] * 8)  # about 4,200 characters
    engine = ScriptedEngine(text, piece_chars=400)
    channel, bob = fake.channel_ids[CHANNEL], fake.user_ids["bob"]
    async with running(make_bot(tmp_path, engine, edit_interval_s=0.05), fake):
        asked = await fake.push_message(channel, bob, "!Explain Flask routes at length?")
        await final_reply(fake, asked)
        messages = await fake.wait_for(
            lambda: (m := answers_in(fake, channel)) and final(m[-1]["content"]) and m,
            what="the last part with the footer",
        )
    assert len(messages) == 3
    assert all(len(m["content"]) <= 2000 for m in messages)
    assert all(not final(m["content"]) for m in messages[:-1])
    joined = " ".join(answer_text(m["content"]) for m in messages)
    assert joined.split() == text.split()


async def test_slash_ask_answers_through_the_interaction(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine("Assignment 3 is due on 16 March.", delay_s=0.02)
    channel, carol = fake.channel_ids[CHANNEL], fake.user_ids["carol"]
    async with running(make_bot(tmp_path, engine), fake):
        record = fake.interaction(
            await fake.push_interaction("ask", {"question": "When is A3 due?"}, carol, channel)
        )
        original = await fake.wait_for(lambda: record.original_message_id, what="the response")
        await fake.wait_for(lambda: final(fake.message(original)["content"]), what="final")
    assert record.callbacks[0]["type"] == 4 and record.callbacks[0]["data"]["content"] == "🧠"
    assert answer_text(fake.message(original)["content"]) == "Assignment 3 is due on 16 March."
    assert fake.calls_to("PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}")


async def test_questions_wait_in_line_and_see_their_position(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine("Slow and steady answer. " * 4, piece_chars=8, delay_s=0.1)
    channel = fake.channel_ids[CHANNEL]
    async with running(make_bot(tmp_path, engine, max_concurrent=1, edit_interval_s=0.1), fake):
        first = await fake.push_message(channel, fake.user_ids["alice"], "!first question?")
        await fake.wait_for(lambda: engine.running, what="the first generation")
        second = await fake.push_message(channel, fake.user_ids["bob"], "!second question?")
        third = await fake.push_message(channel, fake.user_ids["carol"], "!third question?")
        for asked in (first, second, third):
            await final_reply(fake, asked, timeout=20)
    third_reply = bot_reply_to(fake, third)[0]
    shown = [r.content for r in fake.revisions_of(int(third_reply["id"]))]
    assert any("1 question(s) ahead" in c for c in shown), shown
    assert any("next in line" in c for c in shown), shown
    assert final(shown[-1])


async def test_rate_limit_and_bad_input_get_short_replies(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine("ok")
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    # Discord itself caps a message at 2,000 characters (dpytest covers a 10,000-character one).
    settings: dict[str, Any] = {"rate_limit_count": 1, "max_question_chars": 500}
    async with running(make_bot(tmp_path, engine, **settings), fake):
        cases = {
            "!": "Ask me a question after `!`",
            "!ask": "Ask me a question after `!`",
            "!frobnicate": "I don't know the command `!frobnicate`",
            "!" + "x " * 750: "1,499 characters long; the limit is 500",
        }
        for content, expected in cases.items():
            asked = await fake.push_message(channel, alice, content)
            reply = (await fake.wait_for(lambda a=asked: bot_reply_to(fake, a)))[0]
            assert expected in reply["content"] and len(reply["content"]) < 300
        allowed = await fake.push_message(channel, alice, "!real question?")
        await final_reply(fake, allowed)
        limited = await fake.push_message(channel, alice, "!another question?")
        reply = (await fake.wait_for(lambda: bot_reply_to(fake, limited)))[0]
        assert "Please wait" in reply["content"]
        ignored = await fake.push_message(channel, alice, "just chatting, no prefix")
        plain_general = await fake.push_message(
            fake.channel_ids["general"], fake.user_ids["bob"], "hello everyone"
        )
        await fake.push_message(channel, alice, "!help")
        await fake.wait_for(
            lambda: any(
                "Ask the course assistant" in m["content"] for m in answers_in(fake, channel)
            )
        )
    assert len(engine.prompts) == 1  # only the one real question reached the model
    assert not bot_reply_to(fake, ignored) and not bot_reply_to(fake, plain_general)
    assert all("🧠" not in m["content"] for m in answers_in(fake, channel))


async def test_swarm_down_ends_with_a_short_notice(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine(fail=SwarmDown("cannot join the private swarm (ControlFailure)"))
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, engine), fake) as bot:
        asked = await fake.push_message(channel, alice, "!is anyone there?")
        reply = await final_reply(fake, asked)
        assert bot.metrics.value("petals_bot_errors_total", reason="swarm_unavailable") == 1
    assert reply["content"].startswith("⚠️ cannot join the private swarm")
    assert "🧠" not in reply["content"] and len(reply["content"]) < 300


async def test_stop_and_breakall(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    fake = fake_discord
    engine = ScriptedEngine("word " * 400, piece_chars=5, delay_s=0.05)
    channel = fake.channel_ids[CHANNEL]
    alice, bob, maya = fake.user_ids["alice"], fake.user_ids["bob"], fake.user_ids["maya"]
    async with running(make_bot(tmp_path, engine, max_concurrent=2, max_queue=5), fake) as bot:
        a = await fake.push_message(channel, alice, "!long answer please?")
        await fake.wait_for(lambda: engine.running == 1)
        stop = fake.interaction(await fake.push_interaction("stop", None, alice, channel))
        await final_reply(fake, a)
        await fake.wait_for(lambda: stop.callbacks)
        assert "Stopped 1 answer" in stop.callbacks[0]["data"]["content"]

        b = await fake.push_message(channel, bob, "!another long one?")
        c = await fake.push_message(channel, alice, "!and a third?")
        d = await fake.push_message(channel, maya, "!a queued fourth?")
        await fake.wait_for(lambda: engine.running == 2 and bot.slots.waiting == 1)
        refused = fake.interaction(await fake.push_interaction("breakall", None, bob, channel))
        await fake.wait_for(lambda: refused.callbacks)
        assert "Only moderators" in refused.callbacks[0]["data"]["content"]
        assert engine.running == 2
        done = fake.interaction(await fake.push_interaction("breakall", None, maya, channel))
        for asked in (b, c, d):
            await final_reply(fake, asked, timeout=5)
        await fake.wait_for(lambda: done.callbacks)
    assert "Stopped 3 answer(s)" in done.callbacks[0]["data"]["content"]
    assert "⏹ stopped by alice" in fake.message(int(bot_reply_to(fake, a)[0]["id"]))["content"]
    assert "stopped by maya" in fake.message(int(bot_reply_to(fake, b)[0]["id"]))["content"]
    assert "Stopped by maya before it started" in bot_reply_to(fake, d)[0]["content"]
    assert len(engine.prompts) == 3  # the queued question never reached the model


async def test_unknown_slash_command_gets_a_short_reply(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, ScriptedEngine()), fake):
        event = fake.app_commands.create("status", {}, alice, channel)
        event["data"] |= {"name": "retired-command", "id": "1234"}
        await fake.dispatch("INTERACTION_CREATE", event)
        record = fake.interaction(int(event["id"]))
        await fake.wait_for(lambda: record.callbacks, what="a reply to the unknown command")
    reply = record.callbacks[0]["data"]
    assert "I don't know `/retired-command`" in reply["content"] and reply["flags"] == 64
