"""Moderators and operators against the fake Discord: /setup, /status from a health service,
the Alertmanager webhook and /metrics, ratings, /stats, /export, A/B mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.bot.helpers import (
    CHANNEL,
    ScriptedEngine,
    alert,
    answers_in,
    bot_reply_to,
    final,
    final_reply,
    health_state,
    make_bot,
)
from tests.fakediscord.client_patch import running
from tests.fakediscord.protocol import Permission
from tests.fakediscord.server import FakeDiscord, InteractionRecord

pytestmark = pytest.mark.bot


async def deferred_reply(fake: FakeDiscord, record: InteractionRecord) -> str:
    """The text that replaced a deferred interaction's "thinking..." message."""
    original = await fake.wait_for(lambda: record.original_message_id, what="the response")
    await fake.wait_for(lambda: fake.edits_of(original), what="the deferred reply")
    return str(fake.message(original)["content"])


async def push_with_channel_option(
    fake: FakeDiscord, name: str, options: dict[str, Any], user: int, channel: int
) -> InteractionRecord:
    """Push a slash command whose options name a channel. discord.py reads a resolved channel's
    ``permissions`` (the member's permissions there), which the fake leaves out; add it."""
    event = fake.app_commands.create(name, options, user, channel)
    for channel_id, resolved in event["data"].get("resolved", {}).get("channels", {}).items():
        resolved["permissions"] = str(fake.world.permissions_of(user, int(channel_id)))
    await fake.dispatch("INTERACTION_CREATE", event)
    return fake.interaction(int(event["id"]))


@pytest_asyncio.fixture
async def health_service() -> AsyncIterator[Callable[[dict[str, Any]], str]]:
    """A stand-in health service on 127.0.0.1 serving a given /api/v1/state body."""
    body: dict[str, Any] = {}

    async def state(request: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.add_routes([web.get("/api/v1/state", state)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def serve(state_body: dict[str, Any]) -> str:
        body.clear()
        body.update(state_body)
        return f"http://127.0.0.1:{port}/api/v1/state"

    yield serve
    await runner.cleanup()


async def test_setup_creates_a_channel_and_limits_the_bot_to_it(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    engine = ScriptedEngine("Answer.")
    general, maya, alice = (
        fake.channel_ids["general"],
        fake.user_ids["maya"],
        fake.user_ids["alice"],
    )
    async with running(make_bot(tmp_path, engine), fake) as bot:
        student = fake.interaction(await fake.push_interaction("setup", None, alice, general))
        await fake.wait_for(lambda: student.callbacks)
        assert "Only moderators" in student.callbacks[0]["data"]["content"]

        record = fake.interaction(await fake.push_interaction("setup", None, maya, general))
        done = await deferred_reply(fake, record)
        created = fake.channel_ids["ask-the-course-bot"]
        assert bot.chosen_channels.get(fake.guild_id) == created
        ignored = await fake.push_message(general, alice, "!Are you still here?")
        asked = await fake.push_message(created, alice, "!Do you answer here?")
        await final_reply(fake, asked)
        slash = fake.interaction(
            await fake.push_interaction("ask", {"question": "here?"}, alice, general)
        )
        await fake.wait_for(lambda: slash.callbacks)
    assert f"<#{created}>" in slash.callbacks[0]["data"]["content"]  # points to the channel
    assert not bot_reply_to(fake, ignored)
    assert len(engine.prompts) == 1
    assert "Ask the course assistant" in answers_in(fake, created)[0]["content"]  # welcome
    overwrites = {int(o["id"]): o for o in fake.channel(created)["permission_overwrites"]}
    assert int(overwrites[fake.bot_user_id]["allow"]) & Permission.SEND_MESSAGES
    assert f"From now on I answer only in <#{created}> (created)" in done
    # The choice is in the database: a restarted bot keeps it.
    async with running(make_bot(tmp_path, engine), fake) as restarted:
        assert restarted.chosen_channels == {fake.guild_id: created}


async def test_setup_adopts_an_existing_channel(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    fake = fake_discord
    channel, maya = fake.channel_ids[CHANNEL], fake.user_ids["maya"]
    async with running(make_bot(tmp_path, ScriptedEngine()), fake) as bot:
        record = await push_with_channel_option(fake, "setup", {"channel": channel}, maya, channel)
        assert "(adopted)" in await deferred_reply(fake, record)
        assert bot.chosen_channels == {fake.guild_id: channel}
        lift = fake.interaction(
            await fake.push_interaction("setup", {"everywhere": True}, maya, channel)
        )
        assert "every channel again" in await deferred_reply(fake, lift)
        assert bot.chosen_channels == {}
    assert set(fake.channel_ids) == {"general", CHANNEL}  # nothing created


async def test_status_reads_the_health_service(
    fake_discord: FakeDiscord, tmp_path: Path, health_service: Callable[[dict[str, Any]], str]
) -> None:
    fake = fake_discord
    url = health_service(health_state(uncovered=[2]))
    channel, bob = fake.channel_ids[CHANNEL], fake.user_ids["bob"]
    async with running(make_bot(tmp_path, ScriptedEngine(), status_url=url), fake):
        record = fake.interaction(await fake.push_interaction("status", None, bob, channel))
        text = await deferred_reply(fake, record)
    assert text.startswith("🔴 **tiny-llama**: broken — 4/8 blocks")
    assert "no server for block(s) 0-3" in text


async def test_status_when_the_health_service_is_down(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    url = "http://127.0.0.1:9/api/v1/state"  # discard port: nothing listens
    channel, bob = fake.channel_ids[CHANNEL], fake.user_ids["bob"]
    async with running(make_bot(tmp_path, ScriptedEngine(), status_url=url), fake):
        await fake.push_message(channel, bob, "!status")
        reply = await fake.wait_for(lambda: answers_in(fake, channel), what="a status reply")
    assert reply[0]["content"].startswith(f"⚠️ The health service at {url} did not answer")


async def test_alertmanager_webhook_posts_to_the_admin_channel_and_metrics_are_served(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    admin = fake.channel_ids["general"]
    secret = tmp_path / "webhook-token"
    secret.write_text("alertmanager-shared-secret-42\n")
    secret.chmod(0o600)
    settings: dict[str, Any] = {
        "http_enabled": True,
        "http_port": 0,
        "alerts_channel_id": admin,
        "webhook_token_file": secret,
    }
    auth = {"Authorization": "Bearer alertmanager-shared-secret-42"}
    async with running(make_bot(tmp_path, ScriptedEngine(), **settings), fake) as bot:
        assert bot.web is not None
        base = f"http://127.0.0.1:{bot.web.port}"
        body = {
            "version": "4",
            "status": "firing",
            "receiver": "petals-discord",
            "alerts": [alert("firing", "PetalsBlockUncovered"), alert("resolved", "PetalsSlow")],
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/alertmanager", json=body) as response:
                assert response.status == 401  # no bearer token
            async with http.post(f"{base}/alertmanager", json=body, headers=auth) as response:
                assert response.status == 200
            async with http.post(
                f"{base}/alertmanager", data=b"{not json", headers=auth
            ) as response:
                assert response.status == 400
            async with http.post(
                f"{base}/alertmanager", json={"version": "4"}, headers=auth
            ) as response:
                assert response.status == 400 and "status" in (await response.json())["error"]
            posted = await fake.wait_for(lambda: answers_in(fake, admin), what="the alert post")
            async with http.get(f"{base}/metrics") as response:
                exposition = await response.text()
            async with http.get(f"{base}/healthz") as response:
                health = json.loads(await response.text())
    content = posted[0]["content"]
    assert content.index("🔥 **FIRING** · **PetalsBlockUncovered**") < content.index(
        "✅ **RESOLVED**"
    )
    assert 'petals_bot_alerts_received_total{status="firing"} 1.0' in exposition
    for name in (
        "petals_bot_questions_total",
        "petals_bot_errors_total",
        "petals_bot_time_to_first_token_seconds",
        "petals_bot_generation_tokens_per_second",
        "petals_bot_queue_length",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in exposition, name
    assert health["ready"] is True


async def test_ratings_stats_and_export(fake_discord: FakeDiscord, tmp_path: Path) -> None:
    fake = fake_discord
    channel = fake.channel_ids[CHANNEL]
    alice, bob, carol, maya = (fake.user_ids[n] for n in ("alice", "bob", "carol", "maya"))
    async with running(
        make_bot(tmp_path, ScriptedEngine(), add_rating_reactions=True), fake
    ) as bot:
        asked = await fake.push_message(channel, alice, "!Rate me?")
        answer = int((await final_reply(fake, asked))["id"])
        await fake.wait_for(lambda: fake.reactors(answer, "👎"), what="the bot's rating buttons")
        await fake.push_reaction(channel, answer, alice, "👍")
        await fake.push_reaction(channel, answer, bob, "👎")
        await fake.push_reaction(channel, answer, carol, "👍🏽")
        await fake.push_reaction(channel, answer, carol, "🎉")  # not a rating
        await fake.wait_for(lambda: bot.metrics.value("petals_bot_ratings_total", rating="up") == 2)
        await fake.wait_for(
            lambda: bot.metrics.value("petals_bot_ratings_total", rating="down") == 1
        )
        refused = fake.interaction(await fake.push_interaction("stats", None, alice, channel))
        stats = fake.interaction(await fake.push_interaction("stats", None, maya, channel))
        export = fake.interaction(await fake.push_interaction("export", None, maya, channel))
        await fake.wait_for(lambda: refused.callbacks and stats.callbacks)
        assert await deferred_reply(fake, export) == "1 answer(s)."
    assert "Only moderators" in refused.callbacks[0]["data"]["content"]
    assert "👍 2 · 👎 1" in stats.callbacks[0]["data"]["content"]
    assert stats.callbacks[0]["data"]["flags"] == 64  # only the moderator sees it
    upload = next(c for c in fake.calls if c.route.startswith("POST /webhooks/"))
    assert upload.json["attachments"][0]["filename"] == "course-bot-answers.csv"
    data = next(iter(fake.files.values())).decode()
    assert data.splitlines()[0].startswith("answer_id,created_at")
    assert data.splitlines()[1].endswith(",2,1")


async def test_ab_mode_answers_with_both_models_and_records_preferences(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    big = ScriptedEngine("The big model's answer.", label="big-70b")
    small = ScriptedEngine("The small model's answer.", label="small-7b")
    channel, alice, maya = fake.channel_ids[CHANNEL], fake.user_ids["alice"], fake.user_ids["maya"]
    async with running(make_bot(tmp_path, big, ab_engine=small), fake) as bot:
        asked = await fake.push_message(channel, alice, "!Which is better?")
        await fake.wait_for(
            lambda: len([m for m in bot_reply_to(fake, asked) if final(m["content"])]) == 2,
            what="both answers",
        )
        replies = bot_reply_to(fake, asked)
        by_model = {("big" if "big model" in m["content"] else "small"): m for m in replies}
        assert {m["content"].split("\n")[0] for m in replies} == {"**Answer A**", "**Answer B**"}
        assert all(
            "big-70b" not in m["content"] and "small-7b" not in m["content"] for m in replies
        )
        await fake.push_reaction(channel, int(by_model["big"]["id"]), alice, "👍")
        await fake.push_reaction(channel, int(by_model["small"]["id"]), alice, "👎")
        await fake.wait_for(lambda: bot.metrics.value("petals_bot_ratings_total", rating="down"))
        # A follow-up to the small model's answer continues with the small model only.
        follow = await fake.push_message(
            channel, alice, "Why?", reference=int(by_model["small"]["id"])
        )
        await final_reply(fake, follow)
        stats = fake.interaction(await fake.push_interaction("stats", None, maya, channel))
        await fake.wait_for(lambda: stats.callbacks)
    assert len(big.prompts) == 1 and len(small.prompts) == 2
    assert "big-70b preferred 1" in stats.callbacks[0]["data"]["content"]
