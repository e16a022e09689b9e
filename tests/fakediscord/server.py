"""FakeDiscord: a fake Discord (REST + gateway) on 127.0.0.1 that the unmodified discord.py
client can log in to, plus the recorder and helpers tests use to drive and inspect it.

It runs on the caller's event loop, so a pytest-asyncio test, the fake and the bot share one
loop. The state and Discord's rules live in world.py, the websocket in gateway.py, the routes
in rest.py; this module records every REST call, checks the bot token, injects failures and
pushes the events students would cause.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from tests.fakediscord.commands import AppCommands, InteractionRecord
from tests.fakediscord.gateway import Gateway
from tests.fakediscord.limits import BucketRule, RateLimits
from tests.fakediscord.protocol import (
    PRIVILEGED_INTENTS,
    PUBLIC_THREAD,
    THREAD_TYPES,
    ApiError,
    Json,
)
from tests.fakediscord.rest import API_PREFIX, BODY, FILES, RestApi, json_response
from tests.fakediscord.world import Revision, World

__all__ = ["FakeDiscord", "InteractionRecord", "RecordedCall", "Revision"]

T = TypeVar("T")
GATEWAY_PATH = "/gateway-ws"


@dataclass
class RecordedCall:
    """One REST request the bot made. ``route`` is discord.py's ``Route.key`` spelling."""

    method: str
    route: str  # e.g. "POST /channels/{channel_id}/messages"
    path: str  # e.g. "/channels/1234/messages"
    query: dict[str, str]
    json: Any  # the JSON body (payload_json for uploads), None without one
    at: float  # time.monotonic() on arrival
    status: int | None = None  # filled in once answered


@dataclass(frozen=True)
class _Fault:
    status: int
    code: int
    message: str
    retry_after: float | None

    def response(self) -> web.Response:
        body: Json = {"message": self.message, "code": self.code}
        headers = {}
        if self.retry_after is not None:
            body |= {"retry_after": self.retry_after, "global": False}
            # discord.py retries a 429 only when it has a Via header; without one it assumes
            # a Cloudflare ban and raises.
            headers = {"Via": "1.1 google", "Retry-After": str(self.retry_after)}
        return json_response(body, self.status, headers)


class FakeDiscord:
    """One guild ("general" and "ask-the-swarm" channels, a "moderator" role, students and a
    moderator who owns the guild) and one bot application; use as ``async with``."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        channel_names: Iterable[str] = ("general", "ask-the-swarm"),
        student_names: Iterable[str] = ("alice", "bob", "carol"),
        moderator_names: Iterable[str] = ("maya",),
        privileged_intents: int = int(PRIVILEGED_INTENTS),
        heartbeat_interval_ms: int = 41_250,
        interaction_ack_timeout: float = 3.0,
        interaction_token_ttl: float = 900.0,
        latency_s: float = 0.002,
    ) -> None:
        self.world = World(
            token=token,
            channel_names=channel_names,
            student_names=student_names,
            moderator_names=moderator_names,
            privileged_intents=privileged_intents,
            interaction_ack_timeout=interaction_ack_timeout,
        )
        # Discord invalidates an interaction token 15 minutes after the interaction; tests
        # shorten it to seconds.
        self.world.interaction_token_ttl = interaction_token_ttl
        self.latency_s = latency_s  # added before every REST answer: a little like a network
        self.rate_limits = RateLimits()
        self._resets: dict[str, int] = {}
        self.app_commands = AppCommands(self.world)
        self.gateway = Gateway(self.world, heartbeat_interval_ms, self._notify)
        self.rest = RestApi(self.world, self.app_commands, self.gateway)
        self.guild_id = self.world.guild_id
        self.application_id = self.world.application_id
        self.bot_user_id = self.world.bot_user_id
        self.user_ids = self.world.user_ids  # name -> id, including "swarm-bot"
        self.role_ids = self.world.role_ids  # name -> id, including "@everyone"
        self.channel_ids = self.world.channel_ids  # name -> id, grows as the bot adds channels
        self.calls: list[RecordedCall] = []
        self.unhandled: list[RecordedCall] = []  # calls to routes the fake does not serve
        self.port = 0
        self._faults: dict[str, list[_Fault]] = {}
        self._waiters: set[asyncio.Future[None]] = set()
        self._runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        @web.middleware
        async def recorder(request: web.Request, handler: Any) -> web.StreamResponse:
            return await self._serve(request, handler)

        app = web.Application(middlewares=[recorder])
        app.add_routes([web.get(GATEWAY_PATH, self.gateway.handle), *self.rest.routes()])
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.world.base_url, self.gateway.url = self.url, self.gateway_url

    async def close(self) -> None:
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def token(self) -> str:
        """The bot token the fake accepts (REST Authorization and gateway IDENTIFY)."""
        return self.world.token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """What discord.http.Route.BASE must be."""
        return self.url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """What DiscordWebSocket.DEFAULT_GATEWAY must be."""
        return f"ws://127.0.0.1:{self.port}{GATEWAY_PATH}"

    @property
    def interaction_ack_timeout(self) -> float:
        """Seconds the bot has for its first interaction response (Discord: 3)."""
        return self.world.interaction_ack_timeout

    @interaction_ack_timeout.setter
    def interaction_ack_timeout(self, seconds: float) -> None:
        self.world.interaction_ack_timeout = seconds

    # ---------------------------------------------------------------- recorder
    async def _serve(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else request.path
        body, files = await _read_body(request)
        call = RecordedCall(
            method=request.method,
            route=f"{request.method} {template.removeprefix(API_PREFIX)}",
            path=request.path.removeprefix(API_PREFIX),
            query=dict(request.query),
            json=body,
            at=time.monotonic(),
        )
        self.calls.append(call)
        try:
            if resource is None:
                self.unhandled.append(call)
                raise ApiError(404, 0, "404: Not Found")
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self._resets.get(call.route):
                self._resets[call.route] -= 1
                return self._reset_connection(request, call)
            token_free = call.path.startswith(("/interactions/", "/webhooks/"))
            if not token_free and request.headers.get("Authorization") != f"Bot {self.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            verdict = self.rate_limits.check(call.route, dict(request.match_info))
            limit_headers = verdict.headers if verdict is not None else {}
            if verdict is not None and not verdict.allowed:
                body_429 = {
                    "message": "You are being rate limited.",
                    "retry_after": round(verdict.retry_after, 3),
                    "global": False,
                }
                response: web.StreamResponse = json_response(body_429, 429, limit_headers)
            elif faults := self._faults.get(call.route):
                response = faults.pop(0).response()
            else:
                request[BODY], request[FILES] = body, files
                response = await handler(request)
                response.headers.update(limit_headers)
        except ApiError as error:
            response = json_response(error.body(), error.status)
        call.status = response.status
        self._notify()
        return response

    def fail_next(
        self,
        route: str,
        *,
        status: int = 500,
        code: int = 0,
        message: str = "",
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls to ``route`` (a Route.key) with this error instead.
        Note discord.py sleeps 1 s, 3 s, ... before retrying a 500/502/504."""
        fault = _Fault(status, code, message or f"{status}: injected by the test", retry_after)
        self._faults.setdefault(route, []).extend([fault] * times)

    def rate_limit_next(self, route: str, *, retry_after: float = 0.05, times: int = 1) -> None:
        """Answer the next calls to ``route`` with a 429 that discord.py waits out and retries."""
        self.fail_next(
            route,
            status=429,
            message="You are being rate limited.",
            retry_after=retry_after,
            times=times,
        )

    def limit_routes(
        self, routes: Iterable[str], *, limit: int, per_s: float, announce: bool = True
    ) -> None:
        """Give ``routes`` (Route keys) one shared rate-limit bucket per channel/guild/webhook:
        ``limit`` requests per ``per_s`` seconds, 429 with Retry-After beyond it. With
        ``announce=False`` successful answers carry no X-RateLimit-* headers, so the client
        cannot see the bucket coming (as with Discord's undocumented sub-limits)."""
        routes = list(routes)
        rule = BucketRule("|".join(routes), limit, per_s, announce)
        self.rate_limits.add(routes, rule)

    @property
    def rate_limited(self) -> int:
        """How many requests the rate-limit buckets answered with 429."""
        return self.rate_limits.limited

    def reset_next(self, route: str, *, times: int = 1) -> None:
        """Reset the connection (TCP RST, ECONNRESET on the client) instead of answering the
        next ``times`` calls to ``route``."""
        self._resets[route] = self._resets.get(route, 0) + times

    def _reset_connection(self, request: web.Request, call: RecordedCall) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # linger 0: close() sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        call.status = 0
        self._notify()
        raise web.HTTPServiceUnavailable()  # never reaches the client: the connection is gone

    # ------------------------------------------------------------- inspection
    @property
    def connected(self) -> bool:
        """Whether a bot has identified on the gateway and is still connected."""
        return self.gateway.connected

    @property
    def identifies(self) -> list[Json]:
        """IDENTIFY payloads received (token removed): intents, properties, shard."""
        return self.gateway.identifies

    @property
    def dispatched(self) -> list[tuple[str, Json]]:
        """Every gateway DISPATCH (event name, data) sent to the bot, in order."""
        return self.gateway.dispatched

    @property
    def files(self) -> dict[int, bytes]:
        """Uploaded attachment bytes by attachment id."""
        return self.world.files

    def calls_to(self, route: str) -> list[RecordedCall]:
        """Calls whose route equals ``route``, e.g. "PATCH /channels/{channel_id}"."""
        return [c for c in self.calls if c.route == route]

    def channel(self, channel_id: int) -> Json:
        return copy.deepcopy(self.world.channel(channel_id))

    def threads_in(self, parent_id: int) -> list[Json]:
        channels = self.world.channels.values()
        found = [
            c for c in channels if c["type"] in THREAD_TYPES and c["parent_id"] == str(parent_id)
        ]
        return copy.deepcopy(found)

    def message(self, message_id: int) -> Json:
        """The current payload of a message that still exists (KeyError otherwise)."""
        return copy.deepcopy(self.world.messages[message_id])

    def messages_in(self, channel_id: int, *, author_id: int | None = None) -> list[Json]:
        """Existing messages in a channel or thread, oldest first, ephemeral ones included."""
        return copy.deepcopy(
            [
                m
                for m in self.world.messages.values()
                if m["channel_id"] == str(channel_id)
                and author_id in (None, int(m["author"]["id"]))
            ]
        )

    def replies_to(self, message_id: int) -> list[Json]:
        """Existing messages that reply to ``message_id``, oldest first."""
        reference = str(message_id)
        messages = self.world.messages.values()
        return copy.deepcopy(
            [m for m in messages if m.get("message_reference", {}).get("message_id") == reference]
        )

    def revisions_of(self, message_id: int) -> list[Revision]:
        """The content at creation followed by every edit; kept after deletion."""
        return list(self.world.revisions[message_id])

    def edits_of(self, message_id: int) -> list[Revision]:
        """Only the edits, oldest first (empty until the message is edited)."""
        return self.revisions_of(message_id)[1:]

    def reactors(self, message_id: int, emoji: str) -> list[int]:
        """User ids reacting with ``emoji`` ("👍", or "name:id" for a custom one), in order."""
        return list(self.world.reactors.get((message_id, emoji), []))

    def commands(self, guild_id: int | None = None) -> list[Json]:
        """Application commands as last synced, globally or for ``guild_id``, with their ids."""
        return copy.deepcopy(self.app_commands.synced.get(guild_id, []))

    def interaction(self, interaction_id: int) -> InteractionRecord:
        """Live record of a pushed interaction: callbacks, original message, followups."""
        return self.app_commands.interactions[interaction_id]

    async def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 5.0, *, what: str = ""
    ) -> T:
        """Return ``predicate()``'s first truthy value. Re-checked whenever the fake records
        something and every 20 ms (for conditions on the bot's side); TimeoutError after
        ``timeout`` seconds, naming ``what`` and the last calls."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (result := predicate()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = "; ".join(f"{c.route} -> {c.status}" for c in self.calls[-5:]) or "none"
                raise TimeoutError(
                    f"not within {timeout}s: {what or predicate!r} (last calls: {recent})"
                )
            waiter = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=min(remaining, 0.02))
            finally:
                self._waiters.discard(waiter)
                waiter.cancel()
        return result

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ pushes
    async def push_message(
        self,
        channel_id: int,
        author_id: int,
        content: str,
        reference: int | None = None,
        *,
        embeds: list[Json] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> int:
        """A member posts in a channel or thread, optionally replying to ``reference`` and with
        attached ``files`` (name -> bytes); returns the new message id."""
        self._require_bot()
        body: Json = {"content": content, "embeds": embeds or []}
        if reference is not None:
            body["message_reference"] = {"message_id": str(reference)}
        uploads = {
            index: (name, data, "application/octet-stream")
            for index, (name, data) in enumerate((files or {}).items())
        }
        attachments = list(self.world.upload(channel_id, uploads).values())
        message = self.world.create_message(
            channel_id, self.world.member_id(author_id), body, attachments=attachments
        )
        await self.gateway.dispatch_message("MESSAGE_CREATE", message)
        self._notify()
        return int(message["id"])

    async def push_reaction(
        self, channel_id: int, message_id: int, user_id: int, emoji: str
    ) -> None:
        """A member reacts with a unicode emoji, or a custom one written "name:id"."""
        self._require_bot()
        await self.rest.react(channel_id, message_id, self.world.member_id(user_id), emoji)
        self._notify()

    async def push_thread(self, parent_id: int, name: str, owner_id: int) -> int:
        """A member opens a public thread without a starter message; returns its id."""
        self._require_bot()
        world = self.world
        world.text_channel(parent_id)
        body = {"name": name}
        thread = world.add_thread(
            parent_id, world.new_id(), world.member_id(owner_id), PUBLIC_THREAD, body
        )
        await self.gateway.dispatch("THREAD_CREATE", thread | {"newly_created": True})
        self._notify()
        return int(thread["id"])

    async def push_interaction(
        self, name: str, options: Mapping[str, Any] | None, user_id: int, channel_id: int
    ) -> int:
        """A member runs a synced slash command (``name`` may hold subcommands, "swarm
        status"); option types come from the synced definition. Returns the interaction id."""
        self._require_bot()
        user_id = self.world.member_id(user_id)
        event = self.app_commands.create(name, options or {}, user_id, channel_id)
        await self.gateway.dispatch("INTERACTION_CREATE", event)
        self._notify()
        return int(event["id"])

    async def dispatch(self, event: str, data: Json) -> None:
        """Send any gateway event as is, for cases the push helpers do not cover."""
        await self.gateway.dispatch(event, data)

    def _require_bot(self) -> None:
        if not self.connected:
            raise RuntimeError("no bot is on the fake gateway; start it and wait until it is ready")


async def _read_body(request: web.Request) -> tuple[Any, dict[int, tuple[str, bytes, str]]]:
    """The JSON body; for uploads (multipart) payload_json plus the files[n] parts."""
    if request.content_type == "multipart/form-data":
        form = await request.post()
        payload = form.get("payload_json")
        files = {}
        for key, value in form.items():
            match = re.fullmatch(r"files\[(\d+)\]", key)
            if match and isinstance(value, web.FileField):
                files[int(match[1])] = (value.filename, value.file.read(), value.content_type)
        return (json.loads(str(payload)) if payload else {}), files
    text = await request.text() if request.can_read_body else ""
    return (json.loads(text) if text else None), {}
