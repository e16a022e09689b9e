"""Discord's numbers and envelopes that the fake speaks: permission and intent bits, message
flags, channel types, snowflake ids and the JSON error envelope discord.py maps to exceptions.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import IntFlag
from typing import Any

Json = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000
MAX_CONTENT = 2000
EPHEMERAL = 1 << 6  # message flags
LOADING = 1 << 7  # a deferred interaction's "thinking..." message
TEXT, CATEGORY, PUBLIC_THREAD, PRIVATE_THREAD = 0, 4, 11, 12  # channel types
THREAD_TYPES = (PUBLIC_THREAD, PRIVATE_THREAD)
ALL_PERMISSIONS = (1 << 51) - 1


class Permission(IntFlag):
    KICK_MEMBERS = 1 << 1
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    MANAGE_ROLES = 1 << 28
    USE_APPLICATION_COMMANDS = 1 << 31
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    SEND_MESSAGES_IN_THREADS = 1 << 38
    MODERATE_MEMBERS = 1 << 40


class Intent(IntFlag):
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    MESSAGE_CONTENT = 1 << 15


PRIVILEGED_INTENTS = Intent.GUILD_MEMBERS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class ApiError(Exception):
    """An error the REST API answers in Discord's envelope: {"message", "code"[, "errors"]}."""

    def __init__(self, status: int, code: int, message: str, errors: Json | None = None) -> None:
        super().__init__(f"{status} {message} (code {code})")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def body(self) -> Json:
        body: Json = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def form_error(field_name: str, code: str, message: str) -> ApiError:
    """Discord's 50035 "Invalid Form Body"; discord.py folds the field errors into its text."""
    errors = {field_name: {"_errors": [{"code": code, "message": message}]}}
    return ApiError(400, 50035, "Invalid Form Body", errors)


class Snowflakes:
    """Increasing ids that encode the current time like Discord's (discord.py derives
    created_at from them)."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        self._last = max((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22, self._last + 1)
        return self._last
