"""The fake Discord's REST routes under /api/v10, the subset a guild bot uses.

Handlers change the World and announce changes on the gateway as Discord does: the bot's own
messages come back as MESSAGE_CREATE/MESSAGE_UPDATE, threads as THREAD_CREATE, channel edits
as CHANNEL_UPDATE. Route templates are spelled like discord.py's Route paths, so a recorded
call's route equals discord.py's ``Route.key``. Interaction callbacks and webhook routes take
no Authorization header (discord.py sends none there); the server checks it everywhere else.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tests.fakediscord.commands import AppCommands, InteractionRecord
from tests.fakediscord.gateway import Gateway
from tests.fakediscord.protocol import (
    EPHEMERAL,
    LOADING,
    PRIVATE_THREAD,
    PUBLIC_THREAD,
    THREAD_TYPES,
    ApiError,
    Json,
    Permission,
    form_error,
    now_iso,
)
from tests.fakediscord.world import World, emoji_payload, overwrite

API_PREFIX = "/api/v10"
# The request body as read once by the server's recorder, handed to the handlers.
BODY = web.RequestKey("fake_discord_body", object)
FILES: web.RequestKey[dict[int, tuple[str, bytes, str]]] = web.RequestKey(
    "fake_discord_files", dict
)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    # Exactly "application/json": discord.py parses nothing else (aiohttp's json_response
    # would add "; charset=utf-8" and every payload would reach the client as a str).
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _no_content() -> web.Response:
    return web.Response(status=204)


def _id(request: web.Request, key: str) -> int:
    try:
        return int(request.match_info[key])
    except ValueError:
        raise ApiError(404, 0, "404: Not Found") from None


def _body(request: web.Request) -> Json:
    body = request[BODY]
    return body if isinstance(body, dict) else {}


class RestApi:
    """Route table and handlers over one World, its app commands and its Gateway."""

    def __init__(self, world: World, app_commands: AppCommands, gateway: Gateway) -> None:
        self.world = world
        self.app_commands = app_commands
        self.gateway = gateway

    def routes(self) -> list[web.RouteDef]:
        a = API_PREFIX
        channel = a + "/channels/{channel_id}"
        message = channel + "/messages/{message_id}"
        hook = a + "/webhooks/{webhook_id}/{webhook_token}"
        app = a + "/applications/{application_id}"
        return [
            web.get("/attachments/{channel_id}/{attachment_id}/{filename}", self._attachment),
            web.get(a + "/users/@me", self._get_me),
            web.get(a + "/oauth2/applications/@me", self._get_application),
            web.get(a + "/gateway", self._get_gateway),
            web.get(a + "/gateway/bot", self._get_gateway),
            web.get(channel, self._get_channel),
            web.patch(channel, self._patch_channel),
            web.delete(channel, self._delete_channel),
            web.get(channel + "/messages", self._get_messages),
            web.post(channel + "/messages", self._post_message),
            web.post(channel + "/typing", self._typing),
            web.get(message, self._get_message),
            web.patch(message, self._patch_message),
            web.delete(message, self._delete_message),
            web.put(message + "/reactions/{emoji}/@me", self._put_reaction),
            web.delete(message + "/reactions/{emoji}/@me", self._delete_reaction),
            web.delete(message + "/reactions/{emoji}/{member_id}", self._delete_reaction),
            web.post(message + "/threads", self._thread_from_message),
            web.post(channel + "/threads", self._thread_without_message),
            web.put(channel + "/permissions/{target}", self._overwrite),
            web.delete(channel + "/permissions/{target}", self._overwrite),
            web.get(a + "/guilds/{guild_id}/channels", self._get_guild_channels),
            web.post(a + "/guilds/{guild_id}/channels", self._post_guild_channel),
            web.get(app + "/commands", self._commands),
            web.put(app + "/commands", self._commands),
            web.get(app + "/guilds/{guild_id}/commands", self._commands),
            web.put(app + "/guilds/{guild_id}/commands", self._commands),
            web.post(a + "/interactions/{webhook_id}/{webhook_token}/callback", self._callback),
            web.post(hook, self._followup),
            web.get(hook + "/messages/{message_id}", self._webhook_message),
            web.patch(hook + "/messages/{message_id}", self._webhook_message),
            web.delete(hook + "/messages/{message_id}", self._webhook_message),
        ]

    # ------------------------------------------------------------ login / gateway
    async def _attachment(self, request: web.Request) -> web.Response:
        data = self.world.files.get(_id(request, "attachment_id"))
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data)

    async def _get_me(self, request: web.Request) -> web.Response:
        me = copy.deepcopy(self.world.users[self.world.bot_user_id])
        return json_response(me | {"verified": True, "mfa_enabled": False, "locale": "en-US"})

    async def _get_application(self, request: web.Request) -> web.Response:
        return json_response(self.world.application())

    async def _get_gateway(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return json_response({"url": self.gateway.url, "shards": 1, "session_start_limit": limit})

    # ------------------------------------------------------------------ channels
    async def _get_channel(self, request: web.Request) -> web.Response:
        channel_id = _id(request, "channel_id")
        self.world.require(channel_id)  # 404 for an unknown channel, 403 for a hidden one
        return json_response(self.world.channel(channel_id))

    async def _patch_channel(self, request: web.Request) -> web.Response:
        world, channel_id, body = self.world, _id(request, "channel_id"), _body(request)
        channel = world.channel(channel_id)
        if channel["type"] in THREAD_TYPES:
            if channel["owner_id"] != str(world.bot_user_id):
                world.require(channel_id, Permission.MANAGE_THREADS)
            for key in ("archived", "locked", "auto_archive_duration", "invitable"):
                if key in body:
                    channel["thread_metadata"][key] = body[key]
            channel.update(
                {k: body[k] for k in ("name", "rate_limit_per_user", "flags") if k in body}
            )
            await self.gateway.dispatch("THREAD_UPDATE", channel)
            return json_response(channel)
        world.require(channel_id, Permission.MANAGE_CHANNELS)
        if "permission_overwrites" in body:
            world.require(channel_id, Permission.MANAGE_ROLES)
            channel["permission_overwrites"] = [overwrite(o) for o in body["permission_overwrites"]]
        editable = ("name", "topic", "nsfw", "rate_limit_per_user", "position", "parent_id")
        channel.update({k: body[k] for k in editable if k in body})
        await self.gateway.dispatch("CHANNEL_UPDATE", channel)
        return json_response(channel)

    async def _delete_channel(self, request: web.Request) -> web.Response:
        channel_id = _id(request, "channel_id")
        channel = self.world.channel(channel_id)
        is_thread = channel["type"] in THREAD_TYPES
        self.world.require(
            channel_id, Permission.MANAGE_THREADS if is_thread else Permission.MANAGE_CHANNELS
        )
        del self.world.channels[channel_id]
        await self.gateway.dispatch("THREAD_DELETE" if is_thread else "CHANNEL_DELETE", channel)
        return json_response(channel)

    async def _overwrite(self, request: web.Request) -> web.Response:
        channel_id, target = _id(request, "channel_id"), _id(request, "target")
        channel = self.world.channel(channel_id)
        self.world.require(channel_id, Permission.MANAGE_ROLES)
        overwrites = [o for o in channel["permission_overwrites"] if o["id"] != str(target)]
        if request.method == "PUT":
            overwrites.append(overwrite(_body(request) | {"id": target}))
        channel["permission_overwrites"] = overwrites
        await self.gateway.dispatch("CHANNEL_UPDATE", channel)
        return _no_content()

    def _check_guild(self, request: web.Request) -> int | None:
        if "guild_id" not in request.match_info:
            return None
        if _id(request, "guild_id") != self.world.guild_id:
            raise ApiError(404, 10004, "Unknown Guild")
        return self.world.guild_id

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        channels = self.world.channels.values()
        return json_response([c for c in channels if c["type"] not in THREAD_TYPES])

    async def _post_guild_channel(self, request: web.Request) -> web.Response:
        self._check_guild(request)
        self.world.require(None, Permission.MANAGE_CHANNELS)
        channel = self.world.add_channel(_body(request))
        await self.gateway.dispatch("CHANNEL_CREATE", channel)
        return json_response(channel, 201)

    # ------------------------------------------------------------------ messages
    async def _get_messages(self, request: web.Request) -> web.Response:
        channel_id = _id(request, "channel_id")
        self.world.require(channel_id, Permission.READ_MESSAGE_HISTORY)
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 1 << 63))
        after = int(request.query.get("after", 0))
        newest_first = [
            m
            for m in reversed(self.world.messages.values())
            if m["channel_id"] == str(channel_id)
            and after < int(m["id"]) < before
            and not m["flags"] & EPHEMERAL
        ]
        return json_response(newest_first[:limit])

    async def _post_message(self, request: web.Request) -> web.Response:
        world, channel_id, body = self.world, _id(request, "channel_id"), _body(request)
        in_thread = world.channel(channel_id)["type"] in THREAD_TYPES
        world.require(
            channel_id,
            Permission.SEND_MESSAGES_IN_THREADS if in_thread else Permission.SEND_MESSAGES,
        )
        attachments = _new_attachments(body, world.upload(channel_id, request[FILES]))
        message = world.create_message(channel_id, world.bot_user_id, body, attachments=attachments)
        await self.gateway.dispatch_message("MESSAGE_CREATE", message)
        return json_response(message)

    async def _typing(self, request: web.Request) -> web.Response:
        self.world.require(_id(request, "channel_id"))
        return _no_content()

    async def _get_message(self, request: web.Request) -> web.Response:
        channel_id = _id(request, "channel_id")
        self.world.require(channel_id, Permission.READ_MESSAGE_HISTORY)
        return json_response(self.world.message_in(channel_id, _id(request, "message_id")))

    async def _patch_message(self, request: web.Request) -> web.Response:
        world, channel_id = self.world, _id(request, "channel_id")
        message = world.message_in(channel_id, _id(request, "message_id"))
        if message["author"]["id"] != str(world.bot_user_id):
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        world.edit_message(message, _body(request), world.upload(channel_id, request[FILES]))
        await self.gateway.dispatch_message("MESSAGE_UPDATE", message)
        return json_response(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        channel_id = _id(request, "channel_id")
        message = self.world.message_in(channel_id, _id(request, "message_id"))
        if message["author"]["id"] != str(self.world.bot_user_id):
            self.world.require(channel_id, Permission.MANAGE_MESSAGES)
        await self._forget_message(message)
        return _no_content()

    async def _forget_message(self, message: Json) -> None:
        del self.world.messages[int(message["id"])]
        event = {
            "id": message["id"],
            "channel_id": message["channel_id"],
            "guild_id": str(self.world.guild_id),
        }
        await self.gateway.dispatch("MESSAGE_DELETE", event)

    # ----------------------------------------------------------------- reactions
    async def _put_reaction(self, request: web.Request) -> web.Response:
        channel_id, message_id = _id(request, "channel_id"), _id(request, "message_id")
        self.world.require(channel_id, Permission.ADD_REACTIONS, Permission.READ_MESSAGE_HISTORY)
        await self.react(
            channel_id, message_id, self.world.bot_user_id, request.match_info["emoji"]
        )
        return _no_content()

    async def _delete_reaction(self, request: web.Request) -> web.Response:
        channel_id, message_id = _id(request, "channel_id"), _id(request, "message_id")
        user_id = self.world.bot_user_id
        if "member_id" in request.match_info:
            user_id = _id(request, "member_id")
            self.world.require(channel_id, Permission.MANAGE_MESSAGES)
        emoji = request.match_info["emoji"]
        await self.react(channel_id, message_id, user_id, emoji, add=False)
        return _no_content()

    async def react(
        self, channel_id: int, message_id: int, user_id: int, emoji: str, *, add: bool = True
    ) -> None:
        """Add or remove a reaction and announce it (also used for pushed reactions)."""
        world = self.world
        message = world.message_in(channel_id, message_id)
        if not world.react(message, user_id, emoji, add=add):
            return
        event: Json = {
            "user_id": str(user_id),
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "guild_id": str(world.guild_id),
            "emoji": emoji_payload(emoji),
            "burst": False,
            "type": 0,
        }
        if add:
            event |= {"member": world.member_payload(user_id), "burst_colors": []}
            event["message_author_id"] = message["author"]["id"]
        await self.gateway.dispatch(
            "MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", event
        )

    # ------------------------------------------------------------------- threads
    async def _thread_from_message(self, request: web.Request) -> web.Response:
        world, channel_id, message_id = (
            self.world,
            _id(request, "channel_id"),
            _id(request, "message_id"),
        )
        world.text_channel(channel_id)
        world.require(channel_id, Permission.CREATE_PUBLIC_THREADS)
        message = world.message_in(channel_id, message_id)
        if message_id in world.channels:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        # A thread started from a message takes the message's id.
        thread = world.add_thread(
            channel_id, message_id, world.bot_user_id, PUBLIC_THREAD, _body(request)
        )
        message["thread"] = copy.deepcopy(thread)
        await self._announce_thread(thread)
        return json_response(thread)

    async def _thread_without_message(self, request: web.Request) -> web.Response:
        world, channel_id, body = self.world, _id(request, "channel_id"), _body(request)
        if "message" in body:
            raise form_error("message", "UNSUPPORTED", "fake Discord has no forum channels")
        world.text_channel(channel_id)
        kind = int(body.get("type") or PRIVATE_THREAD)  # Discord's default when type is absent
        if kind not in THREAD_TYPES:
            raise form_error("type", "BASE_TYPE_CHOICES", "Value must be one of (11, 12).")
        public = kind == PUBLIC_THREAD
        world.require(
            channel_id,
            Permission.CREATE_PUBLIC_THREADS if public else Permission.CREATE_PRIVATE_THREADS,
        )
        thread = world.add_thread(channel_id, world.new_id(), world.bot_user_id, kind, body)
        await self._announce_thread(thread)
        return json_response(thread)

    async def _announce_thread(self, thread: Json) -> None:
        # discord.py caches a thread only from THREAD_CREATE; until then messages in it would
        # arrive with a PartialMessageable channel instead of a Thread.
        me = {
            "id": thread["id"],
            "user_id": thread["owner_id"],
            "join_timestamp": now_iso(),
            "flags": 0,
        }
        await self.gateway.dispatch("THREAD_CREATE", thread | {"newly_created": True, "member": me})

    # ------------------------------------------------------------------ commands
    async def _commands(self, request: web.Request) -> web.Response:
        if _id(request, "application_id") != self.world.application_id:
            raise ApiError(
                403, 20012, "You are not authorized to perform this action on this application"
            )
        scope = self._check_guild(request)
        if request.method == "GET":
            return json_response(self.app_commands.synced.get(scope, []))
        return json_response(self.app_commands.sync(scope, request[BODY]))

    # -------------------------------------------------------------- interactions
    async def _callback(self, request: web.Request) -> web.Response:
        world = self.world
        record = self.app_commands.interaction(
            _id(request, "webhook_id"), request.match_info["webhook_token"]
        )
        body = _body(request)
        if record.acknowledged:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if time.monotonic() - record.created_at > world.interaction_ack_timeout:
            raise ApiError(404, 10062, "Unknown interaction")  # the 3 s window has passed
        kind, data = body.get("type"), body.get("data") or {}
        if kind not in (4, 5):  # message / deferred message; components and modals are not faked
            raise form_error("type", "UNSUPPORTED", f"fake Discord: callback type {kind}")
        message = world.create_message(
            record.channel_id,
            world.bot_user_id,
            data,
            kind=20,  # CHAT_INPUT_COMMAND
            flags=LOADING if kind == 5 else 0,
            interaction=record,
        )
        record.callbacks.append(body)
        record.original_message_id = int(message["id"])
        await self.gateway.dispatch_message("MESSAGE_CREATE", message)
        if "with_response" not in request.query:
            return _no_content()
        summary = {
            "id": str(record.id),
            "type": 2,
            "response_message_id": message["id"],
            "response_message_loading": kind == 5,
            "response_message_ephemeral": bool(message["flags"] & EPHEMERAL),
        }
        return json_response(
            {"interaction": summary, "resource": {"type": kind, "message": message}}
        )

    def _webhook_interaction(self, request: web.Request) -> InteractionRecord:
        if _id(request, "webhook_id") != self.world.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        record = self.app_commands.acknowledged(request.match_info["webhook_token"])
        if time.monotonic() - record.created_at > self.world.interaction_token_ttl:
            raise ApiError(401, 50027, "Invalid Webhook Token")  # Discord: after 15 minutes
        return record

    async def _followup(self, request: web.Request) -> web.Response:
        world, record, body = self.world, self._webhook_interaction(request), _body(request)
        uploaded = world.upload(record.channel_id, request[FILES])
        original = world.messages.get(record.original_message_id or 0)
        if original is not None and original["flags"] & LOADING:
            # The first followup after a defer fills in the "thinking..." message.
            world.edit_message(original, body, uploaded)
            await self.gateway.dispatch_message("MESSAGE_UPDATE", original)
            message = original
        else:
            attachments = _new_attachments(body, uploaded)
            message = world.create_message(
                record.channel_id,
                world.bot_user_id,
                body,
                kind=20,
                attachments=attachments,
                interaction=record,
            )
            record.followup_ids.append(int(message["id"]))
            await self.gateway.dispatch_message("MESSAGE_CREATE", message)
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(message)
        return _no_content()

    async def _webhook_message(self, request: web.Request) -> web.Response:
        world, record = self.world, self._webhook_interaction(request)
        raw = request.match_info["message_id"]
        message_id = (
            record.original_message_id if raw == "@original" else _id(request, "message_id")
        )
        if message_id is None or message_id not in (
            record.original_message_id,
            *record.followup_ids,
        ):
            raise ApiError(404, 10008, "Unknown Message")
        message = world.message_in(record.channel_id, message_id)
        if request.method == "PATCH":
            world.edit_message(
                message, _body(request), world.upload(record.channel_id, request[FILES])
            )
            await self.gateway.dispatch_message("MESSAGE_UPDATE", message)
        elif request.method == "DELETE":
            await self._forget_message(message)
            return _no_content()
        return json_response(message)


def _new_attachments(body: Json, uploaded: Mapping[int, Json]) -> list[Json]:
    """The body's attachments list refers to uploads by their index in files[n]."""
    return [
        uploaded[int(a["id"])] for a in body.get("attachments") or [] if int(a["id"]) in uploaded
    ]
