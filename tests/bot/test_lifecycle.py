"""An answer's life in the database and after a crash, with the real discord.py client against
the fake Discord: the placeholder is stored at once (a 👍 while it streams counts), a crash's
leftover placeholders are tidied at start, the queue gauge follows the line, A/B in a thread
shows both answers and a single vote counts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bot.app import INTERRUPTED
from bot.errors import AnswerTimeout
from bot.store import WRITING, Store
from tests.bot.helpers import (
    CHANNEL,
    ScriptedEngine,
    answer_text,
    bot_reply_to,
    bot_settings,
    final,
    final_reply,
    make_bot,
    record,
)
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot


async def test_a_rating_during_streaming_is_stored(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine("A slowly written answer about graphs. " * 4, delay_s=0.05)
    channel, alice = fake.channel_ids[CHANNEL], fake.user_ids["alice"]
    async with running(make_bot(tmp_path, engine, edit_interval_s=0.1), fake) as bot:
        asked = await fake.push_message(channel, alice, "!Graphs?")
        placeholder = await fake.wait_for(lambda: bot_reply_to(fake, asked), what="placeholder")
        await fake.wait_for(lambda: engine.running, what="the generation")
        answer_id = int(placeholder[0]["id"])
        await fake.push_reaction(channel, answer_id, alice, "👍")
        await fake.wait_for(lambda: bot.metrics.value("petals_bot_ratings_total", rating="up"))
        assert engine.running  # still streaming when the rating was stored
        reply = await final_reply(fake, asked, timeout=20)
        assert await bot.store.run(Store.ratings, answer_id) == {alice: 1}
        stored = await bot.store.run(Store.answer_for_message, answer_id)
    assert final(reply["content"])
    assert stored is not None and stored.stopped_by == "eos" and stored.answer


async def test_restart_tidies_a_placeholder_a_crash_left(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    channel, bob = fake.channel_ids[CHANNEL], fake.user_ids["bob"]
    world = fake.world
    # What a SIGKILL mid-answer leaves: a "writing" placeholder in Discord and in the database.
    question = world.create_message(channel, world.member_id(bob), {"content": "!Crash?"})
    left = world.create_message(
        channel, world.bot_user_id, {"content": "🧠 Half an answ\n-# 🧠 writing…"}
    )
    left_id = int(left["id"])
    store = Store(bot_settings(tmp_path).database)
    store.add_answer(
        record(
            left_id,
            channel_id=channel,
            guild_id=fake.guild_id,
            question_message_id=int(question["id"]),
            answer="",
            tokens=0,
            stopped_by=WRITING,
            created_at=time.time(),
        )
    )
    store.close()
    async with running(make_bot(tmp_path, ScriptedEngine()), fake) as bot:
        await fake.wait_for(
            lambda: fake.message(left_id)["content"] == INTERRUPTED, what="the tidy edit"
        )
        assert await bot.store.run(Store.unfinished) == []
        stored = await bot.store.run(Store.answer_for_message, left_id)
    assert stored is not None and stored.stopped_by == "interrupted"


async def test_an_answer_that_fails_leaves_nothing_to_tidy(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine(fail=RuntimeError("boom"))
    channel = fake.channel_ids[CHANNEL]
    async with running(make_bot(tmp_path, engine), fake) as bot:
        asked = await fake.push_message(channel, fake.user_ids["carol"], "!Fail?")
        reply = await final_reply(fake, asked)
        await fake.wait_for(lambda: not bot.jobs, what="the job to end")
        assert await bot.store.run(Store.unfinished) == []
    assert "went wrong" in reply["content"]


async def test_queue_gauge_counts_waiting_questions(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine("Answer. " * 20, piece_chars=8, delay_s=0.1)
    channel = fake.channel_ids[CHANNEL]
    async with running(make_bot(tmp_path, engine, max_concurrent=1), fake) as bot:
        first = await fake.push_message(channel, fake.user_ids["alice"], "!one?")
        await fake.wait_for(lambda: engine.running, what="the first generation")
        second = await fake.push_message(channel, fake.user_ids["bob"], "!two?")
        third = await fake.push_message(channel, fake.user_ids["carol"], "!three?")
        await fake.wait_for(
            lambda: bot.metrics.value("petals_bot_queue_length") == 2, what="two waiting"
        )
        assert bot.metrics.value("petals_bot_generations_running") == 1
        for asked in (first, second, third):
            await final_reply(fake, asked, timeout=30)
        await fake.wait_for(lambda: not bot.jobs, what="all jobs to end")
        assert bot.metrics.value("petals_bot_queue_length") == 0
        assert bot.metrics.value("petals_bot_generations_running") == 0


async def test_ab_in_a_thread_shows_both_answers_and_a_single_vote_counts(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    big = ScriptedEngine("The big model's answer.", label="big-70b", delay_s=0.02)
    small = ScriptedEngine("The small model's answer.", label="small-7b", delay_s=0.02)
    channel, alice, maya = fake.channel_ids[CHANNEL], fake.user_ids["alice"], fake.user_ids["maya"]
    async with running(make_bot(tmp_path, big, ab_engine=small), fake):
        await fake.push_message(channel, alice, "!thread Which model is better?")
        thread = await fake.wait_for(lambda: fake.threads_in(channel), what="the thread")
        thread_id = int(thread[0]["id"])
        answers = await fake.wait_for(
            lambda: (
                (
                    m := [
                        x
                        for x in fake.messages_in(thread_id, author_id=fake.bot_user_id)
                        if final(x["content"])
                    ]
                )
                and len(m) == 2
                and m
            ),
            what="both answers in the thread",
        )
        small_answer = next(m for m in answers if "small model" in m["content"])
        await fake.push_reaction(thread_id, int(small_answer["id"]), alice, "👍")  # one vote only
        stats = fake.interaction(await fake.push_interaction("stats", None, maya, channel))
        await fake.wait_for(lambda: stats.callbacks, what="/stats")
    assert len(fake.threads_in(channel)) == 1
    assert not [c for c in fake.calls if c.status == 400]  # no refused second thread
    assert sorted(answer_text(m["content"]) for m in answers) == [
        "The big model's answer.",
        "The small model's answer.",
    ]
    assert "small-7b preferred 1" in stats.callbacks[0]["data"]["content"]


class FirstTokenTimeout(ScriptedEngine):
    """Behaves like ClientEngine when the swarm gives no first token: cancels its token and
    raises AnswerTimeout."""

    async def generate(self, messages: Any, **kwargs: Any) -> Any:
        self.prompts.append(list(messages))
        await asyncio.sleep(0.1)
        kwargs["cancel"].cancel(reason="timeout")
        raise AnswerTimeout("the swarm gave no first token within 0.1 s")


async def test_ab_one_models_timeout_does_not_stop_the_other(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    text = "The healthy model keeps writing its whole answer. " * 2
    healthy = ScriptedEngine(text, label="big-70b", piece_chars=5, delay_s=0.03)
    stuck = FirstTokenTimeout(label="small-7b")
    channel = fake.channel_ids[CHANNEL]
    async with running(make_bot(tmp_path, healthy, ab_engine=stuck), fake):
        asked = await fake.push_message(channel, fake.user_ids["bob"], "!Both of you?")
        replies = await fake.wait_for(
            lambda: (
                (
                    r := [
                        fake.message(int(m["id"]))
                        for m in bot_reply_to(fake, asked)
                        if "writing…" not in m["content"] and not m["content"].endswith("🧠")
                    ]
                )
                and len(r) == 2
                and r
            ),
            timeout=20,
            what="both answers ended",
        )
    contents = sorted((m["content"] for m in replies), key=lambda c: "⚠️" in c)
    assert answer_text(contents[0]) == text.strip() and final(contents[0])
    assert "⚠️" in contents[1] and "first token" in contents[1]
