"""The fake Discord's gateway websocket: HELLO, IDENTIFY -> READY + GUILD_CREATE, heartbeat
ACKs, member chunks, and DISPATCH events filtered by each connection's intents.

Like the real gateway it compresses with zlib-stream when the client asks (discord.py does by
default: one deflate stream per connection, each payload ending in a Z_SYNC_FLUSH), blanks
message content for bots without the MESSAGE_CONTENT intent unless they are mentioned, and
closes with 4004 on a bad token or 4014 on privileged intents the application lacks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakediscord.protocol import EPHEMERAL, PRIVILEGED_INTENTS, Intent, Json
from tests.fakediscord.world import World

EVENT_INTENTS: dict[str, Intent] = {
    "MESSAGE_CREATE": Intent.GUILD_MESSAGES,
    "MESSAGE_UPDATE": Intent.GUILD_MESSAGES,
    "MESSAGE_DELETE": Intent.GUILD_MESSAGES,
    "MESSAGE_REACTION_ADD": Intent.GUILD_MESSAGE_REACTIONS,
    "MESSAGE_REACTION_REMOVE": Intent.GUILD_MESSAGE_REACTIONS,
    "CHANNEL_CREATE": Intent.GUILDS,
    "CHANNEL_UPDATE": Intent.GUILDS,
    "CHANNEL_DELETE": Intent.GUILDS,
    "THREAD_CREATE": Intent.GUILDS,
    "THREAD_UPDATE": Intent.GUILDS,
    "THREAD_DELETE": Intent.GUILDS,
}


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    compressor: Any  # a zlib compressobj when the client asked for zlib-stream, else None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one frame at a time, in order
    seq: int = 0
    intents: int = 0
    identified: bool = False


class Gateway:
    """Gateway connections of one fake; ``on_change`` is called after every received payload."""

    def __init__(self, world: World, heartbeat_interval_ms: int, on_change: Callable[[], None]):
        self.world = world
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.url = ""  # set once the server listens; READY's resume_gateway_url
        self.identifies: list[Json] = []  # IDENTIFY payloads, token removed
        self.presence_updates: list[Json] = []
        self.dispatched: list[tuple[str, Json]] = []  # every DISPATCH sent, in order
        self._connections: list[_Connection] = []
        self._on_change = on_change

    @property
    def connected(self) -> bool:
        return any(c.identified and not c.ws.closed for c in self._connections)

    async def close(self) -> None:
        for connection in list(self._connections):
            await connection.ws.close(code=1001, message=b"fake Discord shutting down")

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a DISPATCH to every identified connection whose intents cover ``event``."""
        needed = EVENT_INTENTS.get(event, 0)
        for connection in self._connections:
            if connection.identified and connection.intents & needed == needed:
                await self._send_dispatch(
                    connection, event, self._as_seen_by(connection, event, data)
                )

    async def dispatch_message(self, event: str, message: Json) -> None:
        """MESSAGE_CREATE/UPDATE for a stored message, with the gateway-only guild_id and
        member fields; ephemeral messages are seen only by their user, so not sent."""
        if message["flags"] & EPHEMERAL:
            return
        data = copy.deepcopy(message) | {"guild_id": str(self.world.guild_id)}
        author = int(message["author"]["id"])
        if author in self.world.members and "webhook_id" not in message:
            data["member"] = copy.deepcopy(self.world.members[author])
        for user in data["mentions"]:
            user["member"] = copy.deepcopy(self.world.members[int(user["id"])])
        await self.dispatch(event, data)

    def _as_seen_by(self, connection: _Connection, event: str, data: Json) -> Json:
        data = copy.deepcopy(data)
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            bot_id = str(self.world.bot_user_id)
            visible = data["author"]["id"] == bot_id or any(
                u["id"] == bot_id for u in data["mentions"]
            )
            if not connection.intents & Intent.MESSAGE_CONTENT and not visible:
                data |= {"content": "", "embeds": [], "attachments": [], "components": []}
        return data

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler for one gateway connection."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        wants_zlib = request.query.get("compress") == "zlib-stream"
        connection = _Connection(ws, zlib.compressobj() if wants_zlib else None)
        self._connections.append(connection)
        try:
            hello = {"heartbeat_interval": self.heartbeat_interval_ms}
            await self._send(connection, {"op": 10, "d": hello, "s": None, "t": None})
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    await self._received(connection, json.loads(frame.data))
                    self._on_change()
        finally:
            self._connections.remove(connection)
            self._on_change()
        return ws

    async def _received(self, connection: _Connection, payload: Json) -> None:
        op, data = payload.get("op"), payload.get("d") or {}
        if op == 1:  # HEARTBEAT
            await self._send(connection, {"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            await self._identify(connection, data)
        elif op == 3:
            self.presence_updates.append(data)
        elif op == 6:
            # No replay buffer, so a RESUME is refused; discord.py then identifies afresh.
            await self._send(connection, {"op": 9, "d": False, "s": None, "t": None})
        elif op == 8:
            await self._send_dispatch(connection, "GUILD_MEMBERS_CHUNK", self._chunk(data))
        else:
            await connection.ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, connection: _Connection, data: Json) -> None:
        world = self.world
        if data.get("token") != world.token:
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS & ~world.privileged_intents:
            await connection.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        self.identifies.append({k: v for k, v in data.items() if k != "token"})
        connection.intents = intents
        ready: Json = {
            "v": 10,
            "user": copy.deepcopy(world.users[world.bot_user_id]),
            "guilds": [{"id": str(world.guild_id), "unavailable": True}],
            "session_id": secrets.token_hex(16),
            "resume_gateway_url": self.url,
            "application": {"id": str(world.application_id), "flags": world.application()["flags"]},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._send_dispatch(connection, "READY", ready)
        await self._send_dispatch(connection, "GUILD_CREATE", world.guild_create(intents))
        connection.identified = True

    def _chunk(self, request: Json) -> Json:
        wanted = {int(u) for u in request.get("user_ids") or []}
        query = (request.get("query") or "").lower()
        members = [
            self.world.member_payload(user_id)
            for user_id, user in self.world.users.items()
            if (not wanted or user_id in wanted) and user["username"].startswith(query)
        ]
        return {
            "guild_id": request["guild_id"],
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
            "nonce": request.get("nonce"),
        }

    async def _send_dispatch(self, connection: _Connection, event: str, data: Json) -> None:
        connection.seq += 1
        self.dispatched.append((event, data))
        await self._send(connection, {"op": 0, "t": event, "s": connection.seq, "d": data})

    async def _send(self, connection: _Connection, payload: Json) -> None:
        text = json.dumps(payload)
        async with connection.lock:  # the zlib stream and frame order are per connection
            if connection.ws.closed:
                return
            if connection.compressor is None:
                await connection.ws.send_str(text)
            else:
                deflated = connection.compressor.compress(text.encode())
                await connection.ws.send_bytes(
                    deflated + connection.compressor.flush(zlib.Z_SYNC_FLUSH)
                )
