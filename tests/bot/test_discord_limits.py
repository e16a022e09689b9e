"""The bot against Discord's real limits in the fake Discord: per-channel rate-limit buckets
with 429s, connection resets, expired interaction tokens, deleted messages. Every answer must
end in a final state whatever Discord does."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.pacing import ChannelPacer
from tests.bot.helpers import (
    CHANNEL,
    ScriptedEngine,
    answer_text,
    bot_reply_to,
    final,
    final_reply,
    make_bot,
)
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot

EDIT = "PATCH /channels/{channel_id}/messages/{message_id}"
POST = "POST /channels/{channel_id}/messages"
HOOK_EDIT = "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}"


async def test_two_streams_slow_down_and_finish_under_429s(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    # The channel allows 3 edits/posts per second and does not announce it; the bot believes
    # it may make 20, so it runs into 429s (Retry-After) and must still finish both answers.
    fake.limit_routes([EDIT, POST], limit=3, per_s=1.0, announce=False)
    text = "Lecture 5 covers hashing, collisions and open addressing in depth. " * 3
    engine = ScriptedEngine(text, piece_chars=5, delay_s=0.03)
    channel = fake.channel_ids[CHANNEL]
    bot = make_bot(
        tmp_path, engine, edit_interval_s=0.05, channel_edit_calls=20, channel_edit_window_s=1.0
    )
    async with running(bot, fake):
        first = await fake.push_message(channel, fake.user_ids["alice"], "!What is in lecture 5?")
        second = await fake.push_message(channel, fake.user_ids["bob"], "!And lecture 5 again?")
        replies = [await final_reply(fake, asked, timeout=60) for asked in (first, second)]
    assert fake.rate_limited >= 1, [c.status for c in fake.calls_to(EDIT)]
    for reply in replies:
        assert final(reply["content"]) and answer_text(reply["content"]) == text.strip()


async def test_channel_budget_is_shared_so_no_429s(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    fake.limit_routes([EDIT, POST], limit=5, per_s=1.0, announce=False)
    text = "Open addressing probes the table for the next free slot. " * 3
    engine = ScriptedEngine(text, piece_chars=5, delay_s=0.03)
    channel = fake.channel_ids[CHANNEL]
    # The bot's budget is a little under the channel's: two streams share it.
    bot = make_bot(
        tmp_path, engine, edit_interval_s=0.05, channel_edit_calls=3, channel_edit_window_s=1.0
    )
    async with running(bot, fake):
        first = await fake.push_message(channel, fake.user_ids["alice"], "!Open addressing?")
        second = await fake.push_message(channel, fake.user_ids["bob"], "!Probing, how?")
        replies = [await final_reply(fake, asked, timeout=60) for asked in (first, second)]
        assert bot.pacers(channel).waited_s > 0  # the streams did wait for the shared budget
    assert fake.rate_limited == 0
    for reply in replies:
        assert final(reply["content"]) and answer_text(reply["content"]) == text.strip()


async def test_a_connection_reset_mid_stream_still_ends_the_answer(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    text = "The exam allows one handwritten A4 sheet of notes."
    engine = ScriptedEngine(text, piece_chars=4, delay_s=0.05)
    channel = fake.channel_ids[CHANNEL]
    async with running(make_bot(tmp_path, engine, edit_interval_s=0.1), fake):
        asked = await fake.push_message(channel, fake.user_ids["carol"], "!What may I bring?")
        await fake.wait_for(lambda: bot_reply_to(fake, asked), what="the placeholder")
        fake.reset_next(EDIT, times=3)  # the next edits, the final one among them, are reset
        reply = await final_reply(fake, asked, timeout=30)
    statuses = [c.status for c in fake.calls_to(EDIT)]
    assert statuses.count(0) == 3, statuses
    assert final(reply["content"]) and answer_text(reply["content"]) == text


async def test_final_edit_failing_for_good_is_posted_as_a_new_message(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    text = "Office hours are on Thursdays."
    engine = ScriptedEngine(text, piece_chars=100, delay_s=0.3)
    channel = fake.channel_ids[CHANNEL]
    async with running(make_bot(tmp_path, engine, edit_interval_s=0.1), fake):
        asked = await fake.push_message(channel, fake.user_ids["alice"], "!Office hours?")
        await fake.wait_for(lambda: bot_reply_to(fake, asked), what="the placeholder")
        fake.reset_next(EDIT, times=100)  # this message can never be edited again
        ending = await fake.wait_for(
            lambda: next(
                (
                    m
                    for m in fake.messages_in(channel, author_id=fake.bot_user_id)
                    if final(m["content"])
                ),
                None,
            ),
            timeout=30,
            what="the answer posted as a new message",
        )
    assert answer_text(ending["content"]) == text


async def test_slash_answer_past_token_expiry_lands_through_the_channel(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    fake.world.interaction_token_ttl = 0.5  # Discord: 15 minutes
    text = "Assignment 4 is due on 30 March at 23:59. " * 3
    engine = ScriptedEngine(text, piece_chars=6, delay_s=0.05)
    channel, carol = fake.channel_ids[CHANNEL], fake.user_ids["carol"]
    async with running(make_bot(tmp_path, engine, edit_interval_s=0.1), fake):
        record = fake.interaction(
            await fake.push_interaction("ask", {"question": "When is A4 due?"}, carol, channel)
        )
        original = await fake.wait_for(lambda: record.original_message_id, what="the response")
        await fake.wait_for(
            lambda: final(fake.message(original)["content"]), timeout=30, what="final"
        )
    hook_statuses = [c.status for c in fake.calls_to(HOOK_EDIT)]
    assert 401 in hook_statuses, hook_statuses
    assert any(c.path.endswith(f"/messages/{original}") for c in fake.calls_to(EDIT))
    assert answer_text(fake.message(original)["content"]) == text.strip()


async def test_deleted_answer_ends_quietly(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    fake = fake_discord
    engine = ScriptedEngine("A long answer that nobody will see. " * 4, delay_s=0.05)
    channel = fake.channel_ids[CHANNEL]
    async with running(make_bot(tmp_path, engine, edit_interval_s=0.1), fake) as bot:
        asked = await fake.push_message(channel, fake.user_ids["bob"], "!Delete me?")
        reply = await fake.wait_for(lambda: bot_reply_to(fake, asked), what="the placeholder")
        fake.fail_next(EDIT, status=404, code=10008, message="Unknown Message", times=100)
        await fake.wait_for(lambda: not bot.jobs, timeout=30, what="the answer to end")
    assert int(reply[0]["id"]) in fake.world.messages  # nothing else was posted in its place
    assert [m for m in fake.messages_in(channel, author_id=fake.bot_user_id)] == reply


async def test_pacer_spaces_calls_within_its_window() -> None:
    now = [0.0]
    pacer = ChannelPacer(2, 5.0, clock=lambda: now[0])
    assert pacer.delay() == 0
    async with pacer.turn():
        pass
    async with pacer.turn():
        pass
    assert pacer.delay() == 5.0  # both places taken until the first leaves the window
    now[0] = 5.0
    assert pacer.delay() == 0
    pacer.back_off(2.5)  # a Retry-After
    assert pacer.delay() == 2.5
