"""Moderator commands against the fake Discord: hidden from students by default permissions
(what Discord uses to hide a command), and allowed by role id, not by a role's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bot.helpers import CHANNEL, ScriptedEngine, make_bot
from tests.fakediscord.client_patch import pointed_at, running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot

MODERATOR_COMMANDS = {"stats", "export", "breakall", "setup", "reload"}
MANAGE_MESSAGES = 1 << 13


async def test_moderator_commands_are_hidden_from_students_by_default(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    async with running(make_bot(tmp_path, ScriptedEngine(), guild_ids=[fake.guild_id]), fake):
        synced = {c["name"]: c for c in fake.commands(fake.guild_id)}
    assert set(synced) >= MODERATOR_COMMANDS
    for name, command in synced.items():
        permissions = command.get("default_member_permissions")
        if name in MODERATOR_COMMANDS:
            assert permissions is not None and int(permissions) == MANAGE_MESSAGES, name
        else:
            assert permissions is None, name


@pytest.mark.parametrize("by_id", [True, False])
async def test_moderators_are_recognised_by_role_id(tmp_path: Path, by_id: bool) -> None:
    # "tom" holds the role named "moderator" but does not own the guild (no administrator).
    async with FakeDiscord(moderator_names=("maya", "tom")) as fake:
        with pointed_at(fake):
            role = fake.role_ids["moderator"] if by_id else fake.role_ids["Swarm Bot"]
            channel, tom = fake.channel_ids[CHANNEL], fake.user_ids["tom"]
            bot = make_bot(tmp_path, ScriptedEngine(), moderator_role_ids=[role])
            async with running(bot, fake):
                stats = fake.interaction(await fake.push_interaction("stats", None, tom, channel))
                await fake.wait_for(lambda: stats.callbacks, what="/stats")
    content = stats.callbacks[0]["data"]["content"]
    if by_id:
        assert "Only moderators" not in content and content  # the stats, empty so far
    else:  # the role's name matches moderator_roles, but only the configured id counts
        assert "Only moderators" in content
