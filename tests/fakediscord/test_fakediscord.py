"""The real, unmodified discord.py client against the fake Discord.

Each test drives a small commands.Bot through one path the kit's bot depends on (login and
guild cache, prefix commands, slash commands, reactions, threads, channel admin, error and
rate-limit handling, shutdown) and asserts on what the fake recorded or the bot observed.
"""

from __future__ import annotations

import asyncio
import gc
import io
import threading
import warnings
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fakediscord.client_patch import running
from tests.fakediscord.protocol import Permission
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot

SEND_ROUTE = "POST /channels/{channel_id}/messages"


def lab_intents(*, message_content: bool = True) -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = intents.members = intents.guild_reactions = True
    intents.message_content = message_content
    return intents


@commands.command()
async def ping(ctx: commands.Context[LabBot]) -> None:
    reply = await ctx.reply("pong", mention_author=False)
    await reply.edit(content="pong (edited)")


@commands.command()
async def thread(ctx: commands.Context[LabBot], *, title: str) -> None:
    opened = await ctx.message.create_thread(name=title)
    await opened.send("Ask follow-ups here.")


@app_commands.command(name="ask", description="Ask the swarm a question")
@app_commands.describe(question="What to ask", max_tokens="How long the answer may be")
async def ask(interaction: discord.Interaction, question: str, max_tokens: int = 64) -> None:
    await interaction.response.send_message(f"Thinking about: {question}")
    await interaction.edit_original_response(content=f"Answer to {question!r} ({max_tokens})")
    await interaction.followup.send("Sources: the swarm")


@app_commands.command(name="forget", description="Answer, then take the answer back")
async def forget(interaction: discord.Interaction) -> None:
    await interaction.response.send_message("a secret", ephemeral=True)
    await interaction.delete_original_response()


@app_commands.command(name="status", description="Show the swarm's health")
async def status(interaction: discord.Interaction) -> None:
    await interaction.response.defer(thinking=True)
    await interaction.followup.send("3 servers online")


class LabBot(commands.Bot):
    """A minimal bot recording what it observes; commands are synced to the fake's guild."""

    def __init__(self, fake: FakeDiscord, *, intents: discord.Intents | None = None) -> None:
        super().__init__(
            command_prefix="!",
            intents=intents or lab_intents(),
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0.1,
        )
        self.guild_id = fake.guild_id
        self.seen: list[discord.Message] = []
        self.raw_reactions: list[discord.RawReactionActionEvent] = []
        self.errors: list[Exception] = []
        self.invokers: list[discord.Member | discord.User] = []
        self.tree.error(self._record_app_command_error)

    async def setup_hook(self) -> None:
        self.add_command(ping)
        self.add_command(thread)
        guild = discord.Object(self.guild_id)
        self.tree.add_command(ask, guild=guild)
        self.tree.add_command(status, guild=guild)
        self.tree.add_command(forget, guild=guild)
        await self.tree.sync(guild=guild)

    async def on_message(self, message: discord.Message) -> None:
        await self.process_commands(message)
        self.seen.append(message)  # after processing: "seen" means "handled"

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        self.invokers.append(interaction.user)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self.raw_reactions.append(payload)
        if self.user is not None and payload.user_id != self.user.id:
            channel = self.get_partial_messageable(payload.channel_id)
            await channel.get_partial_message(payload.message_id).add_reaction(payload.emoji)

    async def on_command_error(
        self, context: commands.Context[Any], error: commands.CommandError
    ) -> None:
        self.errors.append(error)

    async def _record_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        self.errors.append(error)

    def seen_id(self, message_id: int) -> discord.Message | None:
        return next((m for m in self.seen if m.id == message_id), None)


async def test_bot_logs_in_and_sees_the_guild(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running(LabBot(fake), fake) as bot:
        assert bot.user is not None and bot.user.id == fake.bot_user_id
        assert bot.application_id == fake.application_id
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None and guild.chunked
        assert {c.name for c in guild.text_channels} == {"general", "ask-the-swarm"}
        moderator = discord.utils.get(guild.roles, name="moderator")
        assert moderator is not None
        maya = guild.get_member(fake.user_ids["maya"])
        assert maya is not None and moderator in maya.roles
        assert {m.name for m in guild.members} >= {"alice", "bob", "carol", "swarm-bot"}
        assert fake.identifies[-1]["intents"] == bot.intents.value
    synced = fake.commands(fake.guild_id)
    assert {c["name"] for c in synced} == {"ask", "status", "forget"}
    assert all(int(c["id"]) > 0 for c in synced)
    ask_options = next(c for c in synced if c["name"] == "ask")["options"]
    assert [(o["name"], o["type"], o.get("required")) for o in ask_options] == [
        ("question", 3, True),
        ("max_tokens", 4, False),
    ]
    routes = [c.route for c in fake.calls]
    assert routes[:2] == ["GET /users/@me", "GET /oauth2/applications/@me"]
    assert "PUT /applications/{application_id}/guilds/{guild_id}/commands" in routes
    assert fake.unhandled == []


async def test_prefix_command_replies_then_edits(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    general, alice = fake.channel_ids["general"], fake.user_ids["alice"]
    async with running(LabBot(fake), fake) as bot:
        asked = await fake.push_message(general, alice, "!ping")
        reply = (await fake.wait_for(lambda: fake.replies_to(asked), what="a reply to !ping"))[0]
        reply_id = int(reply["id"])
        await fake.wait_for(lambda: fake.edits_of(reply_id), what="the reply's edit")
        # The bot sees its own reply (echoed as MESSAGE_CREATE) and its edit (MESSAGE_UPDATE).
        echoed = await fake.wait_for(lambda: bot.seen_id(reply_id), what="the echoed reply")
        assert bot.user is not None and echoed.author.id == bot.user.id
        cached = await fake.wait_for(
            lambda: next((m for m in bot.cached_messages if m.edited_at and m.id == reply_id), None)
        )
        assert cached.content == "pong (edited)"
    assert [r.content for r in fake.revisions_of(reply_id)] == ["pong", "pong (edited)"]
    assert fake.message(reply_id)["author"]["id"] == str(fake.bot_user_id)
    sent = fake.calls_to(SEND_ROUTE)[0].json
    assert int(sent["message_reference"]["message_id"]) == asked
    assert sent["allowed_mentions"]["replied_user"] is False
    assert fake.message(reply_id)["mentions"] == []  # mention_author=False is honoured
    assert [c.route for c in fake.calls if c.method == "PATCH"] == [
        "PATCH /channels/{channel_id}/messages/{message_id}"
    ]


async def test_message_content_needs_the_intent(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    general, alice = fake.channel_ids["general"], fake.user_ids["alice"]
    async with running(LabBot(fake, intents=lab_intents(message_content=False)), fake) as bot:
        hidden = await fake.push_message(general, alice, "!ping")
        mention = await fake.push_message(general, alice, f"<@{fake.bot_user_id}> !ping")
        assert (await fake.wait_for(lambda: bot.seen_id(hidden))).content == ""
        seen = await fake.wait_for(lambda: bot.seen_id(mention))
        assert seen.content.endswith("!ping") and bot.user in seen.mentions
    assert fake.calls_to(SEND_ROUTE) == []  # neither message could trigger the prefix command


async def test_slash_command_sends_edits_and_follows_up(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    channel, alice = fake.channel_ids["ask-the-swarm"], fake.user_ids["alice"]
    async with running(LabBot(fake), fake) as bot:
        interaction_id = await fake.push_interaction(
            "ask", {"question": "What is Petals?"}, alice, channel
        )
        record = fake.interaction(interaction_id)
        await fake.wait_for(lambda: record.followup_ids, what="the followup")
        invoker = bot.invokers[0]
        assert isinstance(invoker, discord.Member) and invoker.id == alice
    assert record.callbacks[0]["type"] == 4
    assert record.original_message_id is not None
    assert [r.content for r in fake.revisions_of(record.original_message_id)] == [
        "Thinking about: What is Petals?",
        "Answer to 'What is Petals?' (64)",
    ]
    bot_messages = fake.messages_in(channel, author_id=fake.bot_user_id)
    assert [int(m["id"]) for m in bot_messages] == [
        record.original_message_id,
        *record.followup_ids,
    ]
    assert bot_messages[1]["content"] == "Sources: the swarm"
    assert {c.route for c in fake.calls if "webhook" in c.route} == {
        "POST /interactions/{webhook_id}/{webhook_token}/callback",
        "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
        "POST /webhooks/{webhook_id}/{webhook_token}",
    }


async def test_deferred_slash_command_fills_in_the_thinking_message(
    fake_discord: FakeDiscord,
) -> None:
    fake = fake_discord
    channel, maya = fake.channel_ids["general"], fake.user_ids["maya"]
    async with running(LabBot(fake), fake):
        record = fake.interaction(await fake.push_interaction("status", None, maya, channel))
        original = await fake.wait_for(lambda: record.original_message_id)
        await fake.wait_for(lambda: fake.edits_of(original), what="the thinking message filled")
    assert record.deferred and record.followup_ids == []
    assert [r.content for r in fake.revisions_of(original)] == ["", "3 servers online"]
    assert fake.message(original)["flags"] == 0  # no longer "loading"


async def test_interaction_answered_too_late_is_unknown(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.interaction_ack_timeout = 0.0  # as if the bot took longer than Discord's 3 s
    channel, bob = fake.channel_ids["general"], fake.user_ids["bob"]
    async with running(LabBot(fake), fake) as bot:
        await fake.push_interaction("status", None, bob, channel)
        error = await fake.wait_for(lambda: bot.errors and bot.errors[0])
    assert isinstance(error, app_commands.CommandInvokeError)
    assert isinstance(error.original, discord.NotFound) and error.original.code == 10062


async def test_reaction_reaches_the_bot_which_reacts_back(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    general, alice, bob = fake.channel_ids["general"], fake.user_ids["alice"], fake.user_ids["bob"]
    async with running(LabBot(fake), fake) as bot:
        posted = await fake.push_message(general, alice, "the swarm answered well")
        await fake.push_reaction(general, posted, bob, "👍")
        reaction = (await fake.wait_for(lambda: bot.raw_reactions))[0]
        await fake.wait_for(lambda: len(fake.reactors(posted, "👍")) == 2, what="bot's reaction")
    assert (reaction.user_id, reaction.message_id, reaction.emoji.name) == (bob, posted, "👍")
    assert reaction.member is not None and reaction.member.name == "bob"
    assert fake.reactors(posted, "👍") == [bob, fake.bot_user_id]
    put = fake.calls_to("PUT /channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me")
    assert len(put) == 1 and put[0].status == 204
    assert fake.message(posted)["reactions"][0]["count"] == 2


async def test_threads_reach_the_bot_as_threads(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    general, alice = fake.channel_ids["general"], fake.user_ids["alice"]
    async with running(LabBot(fake), fake) as bot:
        asked = await fake.push_message(general, alice, "!thread GPU question")
        opened = (await fake.wait_for(lambda: fake.threads_in(general), what="a thread"))[0]
        thread_id = int(opened["id"])
        assert thread_id == asked  # a thread started from a message takes the message's id
        await fake.wait_for(lambda: fake.messages_in(thread_id), what="the bot's thread message")
        followup = await fake.push_message(thread_id, alice, "which GPU do I need?")
        seen = await fake.wait_for(lambda: bot.seen_id(followup))
        assert isinstance(seen.channel, discord.Thread)
        assert seen.channel.parent_id == general and seen.channel.name == "GPU question"

        student_thread = await fake.push_thread(general, "alice's own thread", alice)
        inside = await fake.push_message(student_thread, alice, "hello?")
        assert isinstance(
            (await fake.wait_for(lambda: bot.seen_id(inside))).channel, discord.Thread
        )

        channel = bot.get_channel(general)
        assert isinstance(channel, discord.TextChannel)
        standalone = await channel.create_thread(
            name="standalone", type=discord.ChannelType.public_thread
        )
        assert await fake.wait_for(lambda: bot.get_channel(standalone.id)) is not None
    assert fake.messages_in(thread_id)[0]["content"] == "Ask follow-ups here."
    assert fake.channel(standalone.id)["type"] == 11
    assert fake.calls_to("POST /channels/{channel_id}/messages/{message_id}/threads")
    assert fake.calls_to("POST /channels/{channel_id}/threads")


async def test_channel_creation_and_permission_overwrites(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running(LabBot(fake), fake) as bot:
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None
        moderator = discord.utils.get(guild.roles, name="moderator")
        alice = guild.get_member(fake.user_ids["alice"])
        assert moderator is not None and alice is not None
        created = await guild.create_text_channel(
            "Mods Only",
            overwrites={
                guild.default_role: discord.PermissionOverwrite(view_channel=False),
                moderator: discord.PermissionOverwrite(view_channel=True),
                # Without this the bot hides the channel from itself: 50001 Missing Access next.
                guild.me: discord.PermissionOverwrite(view_channel=True),
            },
        )
        await created.set_permissions(alice, view_channel=True, send_messages=False)
        await created.edit(topic="swarm operators")
        cached = await fake.wait_for(lambda: guild.get_channel(created.id))
        assert isinstance(cached, discord.TextChannel)
        await fake.wait_for(lambda: cached.topic == "swarm operators")
        assert cached.overwrites_for(alice).send_messages is False
    stored = fake.channel(created.id)
    assert stored["name"] == "mods-only" and stored["topic"] == "swarm operators"
    overwrites = {int(o["id"]): o for o in stored["permission_overwrites"]}
    view, send = discord.Permissions(view_channel=True), discord.Permissions(send_messages=True)
    assert int(overwrites[fake.guild_id]["deny"]) == view.value
    assert int(overwrites[fake.role_ids["moderator"]]["allow"]) == view.value
    assert int(overwrites[fake.user_ids["alice"]]["deny"]) == send.value
    assert fake.calls_to("PUT /channels/{channel_id}/permissions/{target}")[0].json["type"] == 1


async def test_rest_round_trips_through_discord_py(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    general, alice = fake.channel_ids["general"], fake.user_ids["alice"]
    async with running(LabBot(fake), fake) as bot:
        channel = await bot.fetch_channel(general)
        assert isinstance(channel, discord.TextChannel) and channel.name == "general"
        guild = bot.get_guild(fake.guild_id)
        assert guild is not None
        assert {c.name for c in await guild.fetch_channels()} == {"general", "ask-the-swarm"}
        asked = await fake.push_message(general, alice, "please summarise")
        async with channel.typing():
            upload = discord.File(io.BytesIO(b"a long answer"), filename="answer.txt")
            answer = await channel.send("see the file", file=upload)
        fetched = await channel.fetch_message(answer.id)
        assert fetched.attachments[0].filename == "answer.txt"
        assert await fetched.attachments[0].read() == b"a long answer"
        history = [m.id async for m in channel.history(limit=10)]
        assert history == [answer.id, asked]  # newest first
        await answer.add_reaction("✅")
        await answer.remove_reaction("✅", guild.me)
        await answer.delete()
        with pytest.raises(discord.NotFound):
            await channel.fetch_message(answer.id)
        record = fake.interaction(await fake.push_interaction("forget", None, alice, general))
        await fake.wait_for(lambda: record.callbacks, what="the ephemeral answer")
        await fake.wait_for(
            lambda: not fake.messages_in(general, author_id=fake.bot_user_id),
            what="the ephemeral answer deleted",
        )
    assert fake.reactors(answer.id, "✅") == []
    assert fake.revisions_of(answer.id)[0].content == "see the file"  # history outlives delete
    assert fake.calls_to("POST /channels/{channel_id}/typing")
    assert record.callbacks[0]["data"]["flags"] == 64  # ephemeral
    assert fake.unhandled == []


async def test_rate_limits_are_waited_out_and_errors_raised(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with running(LabBot(fake), fake) as bot:
        channel = bot.get_channel(fake.channel_ids["general"])
        assert isinstance(channel, discord.TextChannel)
        fake.rate_limit_next(SEND_ROUTE, retry_after=0.05)
        sent = await channel.send("after a 429")
        fake.fail_next(SEND_ROUTE, status=403, code=50013, message="Missing Permissions")
        with pytest.raises(discord.Forbidden) as forbidden:
            await channel.send("not allowed")
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
    assert [c.status for c in fake.calls_to(SEND_ROUTE)] == [429, 200, 403, 400]
    assert fake.message(sent.id)["content"] == "after a 429"
    assert forbidden.value.code == 50013
    assert too_long.value.code == 50035 and "2000 or fewer" in str(too_long.value)


async def test_rate_limit_buckets_send_discords_headers(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.limit_routes([SEND_ROUTE], limit=2, per_s=0.5)
    async with running(LabBot(fake), fake) as bot:
        channel = bot.get_channel(fake.channel_ids["general"])
        assert isinstance(channel, discord.TextChannel)
        for n in range(5):  # discord.py reads the headers and waits before the bucket is empty
            await channel.send(f"message {n}")
        fake.limit_routes([SEND_ROUTE], limit=2, per_s=0.5, announce=False)
        for n in range(5):  # without headers it runs into 429s, waits Retry-After, retries
            await channel.send(f"unannounced {n}")
    statuses = [c.status for c in fake.calls_to(SEND_ROUTE)]
    assert statuses[:5] == [200] * 5, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) == 10, statuses
    assert fake.rate_limited == statuses.count(429)
    texts = [m["content"] for m in fake.messages_in(fake.channel_ids["general"])]
    assert texts == [f"message {n}" for n in range(5)] + [f"unannounced {n}" for n in range(5)]


async def test_rate_limit_answer_carries_retry_after(fake_discord: FakeDiscord) -> None:
    import aiohttp

    fake = fake_discord
    fake.limit_routes([SEND_ROUTE], limit=1, per_s=5.0)
    url = f"{fake.api_base}/channels/{fake.channel_ids['general']}/messages"
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"content": "one"}, headers=headers) as first:
            assert first.status == 200
            assert first.headers["X-RateLimit-Remaining"] == "0"
            bucket = first.headers["X-RateLimit-Bucket"]
        async with session.post(url, json={"content": "two"}, headers=headers) as second:
            body = await second.json()
            assert second.status == 429
            assert 0 < float(second.headers["Retry-After"]) <= 5.0
            assert second.headers["X-RateLimit-Bucket"] == bucket
            assert second.headers["X-RateLimit-Scope"] == "user"
            assert body["global"] is False and 0 < body["retry_after"] <= 5.0


async def test_connection_reset_reaches_the_client(fake_discord: FakeDiscord) -> None:
    import aiohttp

    fake = fake_discord
    async with running(LabBot(fake), fake) as bot:
        channel = bot.get_channel(fake.channel_ids["general"])
        assert isinstance(channel, discord.TextChannel)
        fake.reset_next(SEND_ROUTE)
        with pytest.raises((aiohttp.ClientError, OSError)):
            await channel.send("lost")
        sent = await channel.send("after the reset")
    assert fake.message(sent.id)["content"] == "after the reset"
    assert [c.status for c in fake.calls_to(SEND_ROUTE)] == [0, 200]


async def test_interaction_token_expires(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    fake.world.interaction_token_ttl = 0.0  # as if the answer took longer than 15 minutes
    channel, alice = fake.channel_ids["ask-the-swarm"], fake.user_ids["alice"]
    async with running(LabBot(fake), fake) as bot:
        await fake.push_interaction("ask", {"question": "late?"}, alice, channel)
        error = await fake.wait_for(lambda: bot.errors and bot.errors[0])
    assert isinstance(error, app_commands.CommandInvokeError)
    original = error.original
    assert isinstance(original, discord.HTTPException)
    assert original.status == 401 and original.code == 50027


async def test_bad_token_fails_login(fake_discord: FakeDiscord) -> None:
    with pytest.raises(discord.LoginFailure):
        async with running(LabBot(fake_discord), fake_discord, token="not-the-token"):
            pass
    assert fake_discord.calls[0].status == 401 and not fake_discord.connected


async def test_bot_closes_cleanly(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bot = LabBot(fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with running(bot, fake):
            assert fake.connected
        await fake.wait_for(lambda: not fake.connected, what="the gateway socket closed")
        gc.collect()  # an unclosed aiohttp session would warn from its finalizer here
    assert bot.is_closed()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    keep_alive = [
        t for t in threading.enumerate() if isinstance(t, discord.gateway.KeepAliveHandler)
    ]
    for heartbeat in keep_alive:
        heartbeat.join(timeout=2)
    assert not any(t.is_alive() for t in keep_alive)
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


VIEW, SEND, NONE = Permission.VIEW_CHANNEL, Permission.SEND_MESSAGES, Permission(0)


@pytest.mark.parametrize(
    ("who", "overwrites", "expected"),
    [
        ("alice", [], VIEW | SEND),
        ("alice", [("@everyone", NONE, VIEW)], NONE),
        ("maya", [("@everyone", NONE, VIEW), ("moderator", VIEW, NONE)], VIEW | SEND),
        # A member overwrite is applied after role overwrites, which follow @everyone's.
        ("alice", [("@everyone", NONE, VIEW), ("alice", VIEW, SEND)], VIEW),
        ("maya", [("moderator", NONE, SEND), ("maya", SEND, NONE)], VIEW | SEND),
    ],
)
def test_permission_overwrites_follow_discords_order(
    who: str, overwrites: list[tuple[str, Permission, Permission]], expected: Permission
) -> None:
    fake = FakeDiscord(moderator_names=("owner", "maya"))  # the first moderator owns the guild
    general = fake.world.channel(fake.channel_ids["general"])
    general["permission_overwrites"] = [
        {
            "id": str((fake.user_ids | fake.role_ids)[target]),
            "type": 1 if target in fake.user_ids else 0,
            "allow": str(int(allow)),
            "deny": str(int(deny)),
        }
        for target, allow, deny in overwrites
    ]
    perms = fake.world.permissions_of(fake.user_ids[who], fake.channel_ids["general"])
    assert perms & (VIEW | SEND) == expected
