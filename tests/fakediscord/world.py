"""The fake Discord's guild, without I/O: users, roles, members, channels, threads and
messages kept as Discord's own JSON payloads, and the rules Discord applies to them.

Rules reproduced because bots trip over them on the real service: permission overwrites (a bot
can hide a channel from itself and then get 50001), the 2,000-character and empty-message
limits, allowed_mentions, and a thread started from a message taking that message's id.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.fakediscord.protocol import (
    ALL_PERMISSIONS,
    CATEGORY,
    EPHEMERAL,
    LOADING,
    MAX_CONTENT,
    TEXT,
    THREAD_TYPES,
    ApiError,
    Intent,
    Json,
    Permission,
    Snowflakes,
    form_error,
    now_iso,
)

if TYPE_CHECKING:
    from tests.fakediscord.commands import InteractionRecord

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")

EVERYONE_PERMISSIONS = (
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.ADD_REACTIONS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.CREATE_PUBLIC_THREADS
    | Permission.SEND_MESSAGES_IN_THREADS
)
MODERATOR_PERMISSIONS = (
    Permission.MANAGE_MESSAGES
    | Permission.MANAGE_THREADS
    | Permission.KICK_MEMBERS
    | Permission.MODERATE_MEMBERS
    | Permission.MENTION_EVERYONE
)
BOT_PERMISSIONS = (
    EVERYONE_PERMISSIONS
    | Permission.MANAGE_CHANNELS
    | Permission.MANAGE_ROLES
    | Permission.MANAGE_MESSAGES
    | Permission.MANAGE_THREADS
    | Permission.CREATE_PRIVATE_THREADS
)


@dataclass(frozen=True)
class Revision:
    """A message's content at one point: its creation or one edit."""

    content: str
    embeds: list[Json]
    at: float  # time.monotonic()
    timestamp: str


class World:
    """One guild with a bot, students and moderators who own it; ids are looked up by name
    in ``user_ids``, ``role_ids`` and ``channel_ids``."""

    def __init__(
        self,
        *,
        token: str,
        channel_names: Iterable[str],
        student_names: Iterable[str],
        moderator_names: Iterable[str],
        privileged_intents: int,
        interaction_ack_timeout: float,
    ) -> None:
        self.token = token
        self.privileged_intents = privileged_intents
        self.interaction_ack_timeout = interaction_ack_timeout
        self.interaction_token_ttl = 900.0  # seconds an interaction token lives (Discord: 15 min)
        self.base_url = ""  # set once the server listens; attachment URLs point at it
        self.new_id = Snowflakes()
        self.users: dict[int, Json] = {}
        self.members: dict[int, Json] = {}
        self.roles: dict[int, Json] = {}
        self.channels: dict[int, Json] = {}
        self.messages: dict[int, Json] = {}  # existing messages, in creation order
        self.revisions: dict[int, list[Revision]] = {}  # kept after deletion
        self.reactors: dict[tuple[int, str], list[int]] = {}
        self.files: dict[int, bytes] = {}
        self.user_ids: dict[str, int] = {}
        self.role_ids: dict[str, int] = {}
        self.channel_ids: dict[str, int] = {}
        self.application_id = self.bot_user_id = self.new_id()  # a bot's user id is its app id
        self.guild_id = self.new_id()
        self._add_role("@everyone", EVERYONE_PERMISSIONS, role_id=self.guild_id)
        bot_role = self._add_role("Swarm Bot", BOT_PERMISSIONS, position=1, managed=True)
        self.roles[bot_role]["tags"] = {"bot_id": str(self.bot_user_id)}
        moderator = self._add_role("moderator", MODERATOR_PERMISSIONS, position=2, hoist=True)
        self._add_user("swarm-bot", [bot_role], user_id=self.bot_user_id, bot=True)
        for name in student_names:
            self._add_user(name, [])
        moderators = [self._add_user(name, [moderator]) for name in moderator_names]
        self.owner_id = moderators[0] if moderators else self.bot_user_id
        for position, name in enumerate(channel_names):
            self.add_channel({"name": name, "type": TEXT, "position": position})

    # ------------------------------------------------------------------ seeding
    def _add_role(
        self, name: str, permissions: int, *, role_id: int | None = None, **extra: Any
    ) -> int:
        role_id = role_id or self.new_id()
        self.role_ids[name] = role_id
        colors = {"primary_color": 0, "secondary_color": None, "tertiary_color": None}
        self.roles[role_id] = {
            "id": str(role_id),
            "name": name,
            "permissions": str(int(permissions)),
            "position": 0,
            "color": 0,
            "colors": colors,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        } | extra
        return role_id

    def _add_user(self, name: str, roles: list[int], *, user_id: int = 0, bot: bool = False) -> int:
        user_id = user_id or self.new_id()
        self.user_ids[name] = user_id
        self.users[user_id] = {
            "id": str(user_id),
            "username": name,
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
        }
        self.members[user_id] = {
            "roles": [str(r) for r in roles],
            "joined_at": now_iso(),
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,  # discord.py's Member() requires it
            "communication_disabled_until": None,
        }
        return user_id

    def add_channel(self, body: Json) -> Json:
        kind = int(body.get("type") or TEXT)
        if kind not in (TEXT, CATEGORY):
            raise form_error(
                "type", "BASE_TYPE_CHOICES", f"fake Discord has no channel type {kind}"
            )
        name = _checked_name(body)
        if kind == TEXT:
            name = name.lower().replace(" ", "-")  # as Discord normalises text channel names
        channel_id = self.new_id()
        self.channels[channel_id] = {
            "id": str(channel_id),
            "type": kind,
            "guild_id": str(self.guild_id),
            "name": name,
            "position": int(body.get("position") or len(self.channels)),
            "parent_id": body.get("parent_id"),
            "topic": body.get("topic"),
            "nsfw": bool(body.get("nsfw")),
            "rate_limit_per_user": body.get("rate_limit_per_user") or 0,
            "last_message_id": None,
            "flags": 0,
            "default_auto_archive_duration": 1440,
            "permission_overwrites": [
                overwrite(o) for o in body.get("permission_overwrites") or []
            ],
        }
        self.channel_ids[name] = channel_id
        return self.channels[channel_id]

    def add_thread(
        self, parent_id: int, thread_id: int, owner_id: int, kind: int, body: Json
    ) -> Json:
        now = now_iso()
        metadata = {
            "archived": False,
            "auto_archive_duration": body.get("auto_archive_duration") or 1440,
            "archive_timestamp": now,
            "locked": False,
            "invitable": body.get("invitable", True),
            "create_timestamp": now,
        }
        self.channels[thread_id] = {
            "id": str(thread_id),
            "type": kind,
            "guild_id": str(self.guild_id),
            "parent_id": str(parent_id),
            "owner_id": str(owner_id),
            "name": _checked_name(body),
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "rate_limit_per_user": body.get("rate_limit_per_user") or 0,
            "flags": 0,
            "applied_tags": [],
            "thread_metadata": metadata,
        }
        return self.channels[thread_id]

    # ------------------------------------------------------------------ lookups
    def channel(self, channel_id: int) -> Json:
        try:
            return self.channels[channel_id]
        except KeyError:
            raise ApiError(404, 10003, "Unknown Channel") from None

    def text_channel(self, channel_id: int) -> Json:
        channel = self.channel(channel_id)
        if channel["type"] != TEXT:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        return channel

    def message_in(self, channel_id: int, message_id: int) -> Json:
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != str(channel_id):
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def member_id(self, user_id: int) -> int:
        """``user_id`` if it is a member; test helpers use this to catch typos early."""
        if user_id not in self.members:
            raise LookupError(f"user {user_id} is not a member of the fake guild")
        return user_id

    def member_payload(self, user_id: int) -> Json:
        return copy.deepcopy(self.members[user_id]) | {"user": copy.deepcopy(self.users[user_id])}

    # -------------------------------------------------------------- permissions
    def permissions_of(self, user_id: int, channel_id: int | None) -> int:
        """Discord's algorithm: roles, then the channel's @everyone, role and member overwrites
        (a thread uses its parent's); ``channel_id=None`` gives guild-level permissions."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        roles = [self.guild_id, *map(int, self.members[user_id]["roles"])]
        perms = 0
        for role_id in roles:
            perms |= int(self.roles[role_id]["permissions"])
        if perms & Permission.ADMINISTRATOR:
            return ALL_PERMISSIONS
        if channel_id is None:
            return perms
        channel = self.channel(channel_id)
        if channel["type"] in THREAD_TYPES:
            channel = self.channel(int(channel["parent_id"]))
        overwrites = {int(o["id"]): o for o in channel["permission_overwrites"]}
        layers = [overwrites.get(self.guild_id)]
        role_layers = [overwrites[r] for r in roles[1:] if r in overwrites]
        allow = deny = 0
        for layer in role_layers:  # role overwrites are combined before being applied
            allow, deny = allow | int(layer["allow"]), deny | int(layer["deny"])
        layers += [{"allow": allow, "deny": deny}, overwrites.get(user_id)]
        for layer in filter(None, layers):
            perms = (perms & ~int(layer["deny"])) | int(layer["allow"])
        if not perms & Permission.VIEW_CHANNEL:
            return 0  # a channel one cannot see grants nothing in it
        if not perms & Permission.SEND_MESSAGES:  # these only qualify sending
            perms &= ~(
                Permission.EMBED_LINKS | Permission.ATTACH_FILES | Permission.MENTION_EVERYONE
            )
        return perms

    def require(self, channel_id: int | None, *needed: Permission) -> None:
        """Raise Discord's 403 unless the bot holds ``needed`` (and can see the channel)."""
        perms = self.permissions_of(self.bot_user_id, channel_id)
        if channel_id is not None and not perms & Permission.VIEW_CHANNEL:
            raise ApiError(403, 50001, "Missing Access")
        if any(not perms & p for p in needed):
            raise ApiError(403, 50013, "Missing Permissions")

    # ----------------------------------------------------------------- payloads
    def application(self) -> Json:
        flags = 0  # says which privileged intents are switched on in the developer portal
        if self.privileged_intents & Intent.GUILD_MEMBERS:
            flags |= 1 << 15
        if self.privileged_intents & Intent.MESSAGE_CONTENT:
            flags |= 1 << 19
        return {
            "id": str(self.application_id),
            "name": "Swarm Bot",
            "icon": None,
            "description": "",
            "summary": "",
            "rpc_origins": [],
            "bot_public": False,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "team": None,
            "flags": flags,
            "owner": copy.deepcopy(self.users[self.owner_id]),
            "bot": copy.deepcopy(self.users[self.bot_user_id]),
            "interactions_endpoint_url": None,  # else discord.py warns it gets no interactions
        }

    def guild_create(self, intents: int) -> Json:
        """GUILD_CREATE as sent to a connection with ``intents``: without GUILD_MEMBERS only
        the bot itself is listed, while member_count stays the real count."""
        members = [
            m for m in self.members if intents & Intent.GUILD_MEMBERS or m == self.bot_user_id
        ]
        channels = [c for c in self.channels.values() if c["type"] not in THREAD_TYPES]
        threads = [c for c in self.channels.values() if c["type"] in THREAD_TYPES]
        return copy.deepcopy(
            {
                "id": str(self.guild_id),
                "name": "Petals Study Group",
                "icon": None,
                "owner_id": str(self.owner_id),
                "unavailable": False,  # updates the placeholder READY listed as unavailable
                "large": False,
                "member_count": len(self.members),  # equal to len(members): no chunking needed
                "joined_at": now_iso(),
                "roles": list(self.roles.values()),
                "channels": channels,
                "threads": threads,
                "members": [self.member_payload(m) for m in members],
                "presences": [],
                "voice_states": [],
                "emojis": [],
                "stickers": [],
                "features": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
                "verification_level": 0,
                "default_message_notifications": 1,
                "explicit_content_filter": 0,
                "mfa_level": 0,
                "nsfw_level": 0,
                "premium_tier": 0,
                "preferred_locale": "en-US",
                "system_channel_id": None,
                "rules_channel_id": None,
                "afk_channel_id": None,
                "afk_timeout": 300,
                "application_id": None,
                "description": None,
                "max_members": 500_000,
            }
        )

    # ----------------------------------------------------------------- messages
    def create_message(
        self,
        channel_id: int,
        author_id: int,
        body: Json,
        *,
        kind: int = 0,
        flags: int = 0,
        attachments: Iterable[Json] = (),
        interaction: InteractionRecord | None = None,
    ) -> Json:
        """Store a message as REST returns it (guild_id and member are added on the gateway)."""
        channel = self.channel(channel_id)
        content = body.get("content") or ""
        embeds = [{"type": "rich"} | e for e in body.get("embeds") or []]
        if not flags & LOADING:  # a deferred "thinking..." message starts out empty
            validate_message(content, embeds, [*attachments], body)
        message_id = self.new_id()
        message: Json = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "author": copy.deepcopy(self.users[author_id]),
            "content": content,
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": bool(body.get("tts")),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": list(attachments),
            "embeds": embeds,
            "reactions": [],
            "pinned": False,
            "type": kind,
            "flags": int(body.get("flags") or 0) | flags,
            "components": body.get("components") or [],
        }
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        if interaction is not None:
            message["webhook_id"] = message["application_id"] = str(self.application_id)
            message["interaction_metadata"] = {
                "id": str(interaction.id),
                "type": 2,
                "name": interaction.name,
                "user": copy.deepcopy(self.users[interaction.user_id]),
                "authorizing_integration_owners": {"0": str(self.guild_id)},
            }
        self._attach_reference(message, body.get("message_reference"))
        self._apply_mentions(message, body.get("allowed_mentions"))
        self.messages[message_id] = message
        self.revisions[message_id] = [
            Revision(content, embeds, time.monotonic(), message["timestamp"])
        ]
        channel["last_message_id"] = str(message_id)
        if channel["type"] in THREAD_TYPES:
            channel["message_count"] += 1
            channel["total_message_sent"] += 1
        return message

    def edit_message(self, message: Json, body: Json, uploaded: Mapping[int, Json]) -> None:
        """Apply a PATCH body; ``uploaded`` maps the body's new attachment ids to stored files."""
        if "content" in body:
            message["content"] = body["content"] or ""
        if "embeds" in body:
            message["embeds"] = [{"type": "rich"} | e for e in body["embeds"] or []]
        if "attachments" in body:
            kept = {str(a["id"]) for a in body["attachments"] or []}
            message["attachments"] = [a for a in message["attachments"] if a["id"] in kept]
            message["attachments"] += [a for i, a in uploaded.items() if str(i) in kept]
        if "components" in body:
            message["components"] = body["components"] or []
        if body.get("flags") is not None:
            message["flags"] = int(body["flags"]) | (message["flags"] & EPHEMERAL)
        message["flags"] &= ~LOADING  # editing a deferred "thinking..." message replaces it
        validate_message(message["content"], message["embeds"], message["attachments"], message)
        self._apply_mentions(message, body.get("allowed_mentions"))
        message["edited_timestamp"] = now_iso()
        embeds = copy.deepcopy(message["embeds"])
        revision = Revision(
            message["content"], embeds, time.monotonic(), message["edited_timestamp"]
        )
        self.revisions[int(message["id"])].append(revision)

    def upload(self, channel_id: int, files: dict[int, tuple[str, bytes, str]]) -> dict[int, Json]:
        """Store uploaded files; returns attachment payloads keyed by the upload's index."""
        uploaded = {}
        for index, (filename, data, content_type) in files.items():
            attachment_id = self.new_id()
            self.files[attachment_id] = data
            url = f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{filename}"
            uploaded[index] = {
                "id": str(attachment_id),
                "filename": filename,
                "size": len(data),
                "url": url,
                "proxy_url": url,
                "content_type": content_type,
            }
        return uploaded

    def react(self, message: Json, user_id: int, emoji: str, *, add: bool) -> bool:
        """Add or remove one user's reaction; False when nothing changed (Discord is idempotent)."""
        reactors = self.reactors.setdefault((int(message["id"]), emoji), [])
        if (user_id in reactors) == add:
            return False
        if add:
            reactors.append(user_id)
        else:
            reactors.remove(user_id)
        others = [r for r in message["reactions"] if r["emoji"] != emoji_payload(emoji)]
        if reactors:
            others.append(
                {
                    "emoji": emoji_payload(emoji),
                    "count": len(reactors),
                    "me": self.bot_user_id in reactors,
                    "me_burst": False,
                    "burst_colors": [],
                    "count_details": {"burst": 0, "normal": len(reactors)},
                }
            )
        message["reactions"] = others
        return True

    def _attach_reference(self, message: Json, reference: Json | None) -> None:
        if not reference:
            return
        referenced = self.messages.get(int(reference["message_id"]))
        if referenced is None:
            if reference.get("fail_if_not_exists", True):
                raise form_error(
                    "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                )
            return
        message["type"] = 19 if message["type"] == 0 else message["type"]  # REPLY
        message["message_reference"] = {
            "type": 0,
            "message_id": referenced["id"],
            "channel_id": referenced["channel_id"],
            "guild_id": str(self.guild_id),
        }
        resolved = copy.deepcopy(referenced)
        resolved.pop("referenced_message", None)
        message["referenced_message"] = resolved

    def _apply_mentions(self, message: Json, allowed: Json | None) -> None:
        """Who gets pinged after allowed_mentions; no allowed_mentions means "everyone may be"."""
        parse = None if allowed is None else set(allowed.get("parse") or [])

        def may(kind: str, object_id: str) -> bool:
            listed = {str(i) for i in (allowed or {}).get(kind) or []}
            return parse is None or kind in parse or object_id in listed

        content = message["content"]
        users = [int(m[1]) for m in _USER_MENTION.finditer(content) if may("users", m[1])]
        referenced = message.get("referenced_message")
        if referenced and (allowed is None or allowed.get("replied_user")):
            users.append(int(referenced["author"]["id"]))
        users = [u for u in dict.fromkeys(users) if u in self.members]
        message["mentions"] = [copy.deepcopy(self.users[u]) for u in users]
        roles = [m[1] for m in _ROLE_MENTION.finditer(content) if int(m[1]) in self.roles]
        message["mention_roles"] = [r for r in dict.fromkeys(roles) if may("roles", r)]
        everyone = "@everyone" in content or "@here" in content
        message["mention_everyone"] = everyone and (parse is None or "everyone" in parse)


# ---------------------------------------------------------------------- rules
def overwrite(raw: Json) -> Json:
    """A permission overwrite as Discord stores it (discord.py sends allow/deny as ints)."""
    return {
        "id": str(raw["id"]),
        "type": int(raw.get("type", 0)),
        "allow": str(int(raw.get("allow") or 0)),
        "deny": str(int(raw.get("deny") or 0)),
    }


def emoji_payload(raw: str) -> Json:
    """A reaction emoji from its URL form: "👍" or "name:id" for a custom one."""
    name, _, emoji_id = raw.partition(":")
    return {"id": emoji_id or None, "name": name}


def validate_message(content: str, embeds: list[Json], attachments: list[Json], body: Json) -> None:
    if len(content) > MAX_CONTENT:
        raise form_error(
            "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
        )
    if len(embeds) > 10:
        raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
    for index, embed in enumerate(embeds):
        for key, limit in (("title", 256), ("description", 4096)):
            if len(embed.get(key) or "") > limit:
                message = f"Must be {limit} or fewer in length."
                raise form_error(f"embeds.{index}.{key}", "BASE_TYPE_MAX_LENGTH", message)
    extras = ("components", "sticker_ids", "poll")
    if not (content or embeds or attachments or any(body.get(k) for k in extras)):
        raise ApiError(400, 50006, "Cannot send an empty message")


def _checked_name(body: Json) -> str:
    name = str(body.get("name") or "")
    if not 1 <= len(name) <= 100:
        raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    return name
