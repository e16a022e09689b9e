"""Application commands and interactions in the fake: commands stored by bulk-overwrite sync
(ids kept across syncs, as Discord does) and INTERACTION_CREATE payloads built from them.

Only synced commands can be invoked, as on Discord: an interaction for a command that was never
synced is refused, and option types come from the synced definition. Discord's sync-time
checks that bots trip over are applied: lowercase names up to 32 characters, a 1-100 character
description, at most 25 options, required options before optional ones.
"""

from __future__ import annotations

import copy
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.fakediscord.protocol import ApiError, Json, form_error
from tests.fakediscord.world import World

_COMMAND_NAME = re.compile(r"^[-_a-z0-9]{1,32}$")
_SUBCOMMAND, _GROUP = 1, 2
_ID_OPTION_TYPES = (6, 7, 8, 9)  # user, channel, role, mentionable: value is an id


@dataclass
class InteractionRecord:
    """An interaction pushed by a test and everything the bot answered to it."""

    id: int
    token: str
    name: str
    channel_id: int
    user_id: int
    created_at: float  # time.monotonic()
    callbacks: list[Json] = field(default_factory=list)
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)

    @property
    def deferred(self) -> bool:
        return bool(self.callbacks) and self.callbacks[0].get("type") == 5


class AppCommands:
    """Synced commands per scope (a guild id, or None for global) and pushed interactions."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.synced: dict[int | None, list[Json]] = {}
        self.interactions: dict[int, InteractionRecord] = {}

    def sync(self, scope: int | None, body: Any) -> list[Json]:
        """PUT .../commands: replace the scope's commands, keeping the ids of those whose
        name and type stay."""
        if not isinstance(body, list) or len(body) > 100:
            raise form_error("_", "BASE_TYPE_MAX_LENGTH", "Must be a list of 100 or fewer.")
        old = {(c["name"], c["type"]): c["id"] for c in self.synced.get(scope, [])}
        stored = []
        for index, definition in enumerate(body):
            _validate(index, definition)
            kind = int(definition.get("type") or 1)
            command = copy.deepcopy(definition) | {
                "id": old.get((definition["name"], kind)) or str(self.world.new_id()),
                "type": kind,
                "application_id": str(self.world.application_id),
                "version": str(self.world.new_id()),
                "default_member_permissions": definition.get("default_member_permissions"),
                "nsfw": bool(definition.get("nsfw")),
            }
            if scope is not None:
                command["guild_id"] = str(scope)
            stored.append(command)
        self.synced[scope] = stored
        return stored

    def interaction(self, interaction_id: int, token: str) -> InteractionRecord:
        record = self.interactions.get(interaction_id)
        if record is None or not secrets.compare_digest(record.token, token):
            raise ApiError(404, 10062, "Unknown interaction")
        return record

    def acknowledged(self, token: str) -> InteractionRecord:
        """The interaction behind a webhook token; the webhook exists once it was answered."""
        for record in self.interactions.values():
            if secrets.compare_digest(record.token, token) and record.acknowledged:
                return record
        raise ApiError(404, 10015, "Unknown Webhook")

    def create(self, name: str, options: Mapping[str, Any], user_id: int, channel_id: int) -> Json:
        """Register an interaction for a synced slash command; returns INTERACTION_CREATE's
        data. ``name`` may carry subcommands ("swarm status")."""
        world = self.world
        channel = world.channel(channel_id)
        top, *subs = name.split()
        scopes = [self.synced.get(world.guild_id, []), self.synced.get(None, [])]
        command = next((c for scope in scopes for c in scope if c["name"] == top), None)
        if command is None:
            raise LookupError(f"/{top} was never synced to the fake; sync the command tree first")
        resolved: Json = {}
        data: Json = {"id": command["id"], "name": top, "type": 1}
        data["options"] = self._options(command, subs, dict(options), resolved)
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]  # discord.py looks guild commands up by it
        if resolved:
            data["resolved"] = resolved
        token = secrets.token_urlsafe(24)
        record = InteractionRecord(
            world.new_id(), token, name, channel_id, user_id, time.monotonic()
        )
        self.interactions[record.id] = record
        member = world.member_payload(user_id)
        member["permissions"] = str(world.permissions_of(user_id, channel_id))
        return {
            "id": str(record.id),
            "application_id": str(world.application_id),
            "type": 2,  # APPLICATION_COMMAND
            "token": token,
            "version": 1,
            "data": data,
            "guild_id": str(world.guild_id),
            "guild": {"id": str(world.guild_id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": copy.deepcopy(channel),
            "member": member,
            "app_permissions": str(world.permissions_of(world.bot_user_id, channel_id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(world.guild_id)},
            "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,  # discord.py requires it
        }

    def _options(
        self, command: Json, subs: list[str], values: dict[str, Any], resolved: Json
    ) -> list[Json]:
        definitions = command.get("options") or []
        if subs:  # walk down a subcommand group / subcommand
            wanted = subs[0]
            kinds = (_SUBCOMMAND, _GROUP)
            found = next(
                (o for o in definitions if o["name"] == wanted and o["type"] in kinds), None
            )
            if found is None:
                raise LookupError(f"/{command['name']} has no subcommand {wanted!r}")
            inner = self._options(found, subs[1:], values, resolved)
            return [{"name": wanted, "type": found["type"], "options": inner}]
        built = []
        for definition in definitions:
            if definition["name"] not in values:
                if definition.get("required"):
                    raise ValueError(f"/{command['name']} needs option {definition['name']!r}")
                continue
            value, kind = values.pop(definition["name"]), definition["type"]
            if kind in _ID_OPTION_TYPES:
                value = str(value)
                self._resolve(kind, int(value), resolved)
            built.append({"name": definition["name"], "type": kind, "value": value})
        if values:
            raise LookupError(f"/{command['name']} has no option(s) {sorted(values)}")
        return built

    def _resolve(self, kind: int, object_id: int, resolved: Json) -> None:
        world, key = self.world, str(object_id)
        if kind in (6, 9) and object_id in world.users:
            resolved.setdefault("users", {})[key] = copy.deepcopy(world.users[object_id])
            resolved.setdefault("members", {})[key] = copy.deepcopy(world.members[object_id])
        elif kind in (8, 9) and object_id in world.roles:
            resolved.setdefault("roles", {})[key] = copy.deepcopy(world.roles[object_id])
        elif kind == 7 and object_id in world.channels:
            resolved.setdefault("channels", {})[key] = copy.deepcopy(world.channels[object_id])
        else:
            raise LookupError(f"no object {object_id} for an option of type {kind}")


def _validate(index: int, definition: Json) -> None:
    name, kind = str(definition.get("name", "")), int(definition.get("type") or 1)
    if kind == 1 and not _COMMAND_NAME.match(name):
        raise form_error(
            f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Invalid name {name!r}"
        )
    if kind == 1 and not 1 <= len(definition.get("description") or "") <= 100:
        message = "Must be between 1 and 100 in length."
        raise form_error(f"{index}.description", "BASE_TYPE_BAD_LENGTH", message)
    options = definition.get("options") or []
    if len(options) > 25:
        raise form_error(
            f"{index}.options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
        )
    seen_optional = False
    for option in options:
        if option.get("type") in (_SUBCOMMAND, _GROUP):  # validated like a command
            _validate(index, option | {"type": 1})
            continue
        if option.get("required") and seen_optional:
            message = "Required options must be placed before non-required options"
            code = "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID"
            raise form_error(f"{index}.options", code, message)
        seen_optional = seen_optional or not option.get("required")
