"""The Discord bot's settings (``[bot]`` in swarm.toml, ``PETALS_BOT_*`` env vars, flags) and
its token, which comes ONLY from env ``PETALS_BOT_TOKEN`` or a token file readable by its owner
alone (mode 0600): never from the TOML file or a flag, never logged.

Two settings are for tests and are left out of ``--help``: ``discord_api_base`` and
``discord_gateway_url`` point the unmodified discord.py client at a fake Discord on 127.0.0.1
(only loopback hosts are accepted, so a token can never be sent anywhere else by mistake).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from bot.errors import TokenError
from swarm.settings_base import KitSettings

TOKEN_ENV = "PETALS_BOT_TOKEN"
HIDDEN_FIELDS = ("discord_api_base", "discord_gateway_url")
DEFAULT_SYSTEM_PROMPT = (
    "You are the course assistant of a university course. Answer the student's question "
    "briefly and correctly. When course notes are given, rely on them and name the file you "
    "used in brackets, like [exams.md]. If you do not know, say so. Answer in the language of "
    "the question (English or Norwegian)."
)

StrList = Annotated[list[str], NoDecode]
IntList = Annotated[list[int], NoDecode]


class BotSettings(KitSettings):
    """Everything the course bot needs besides the swarm's own settings and the token."""

    model_config = SettingsConfigDict(env_prefix="PETALS_BOT_", extra="forbid")
    toml_table: ClassVar[str] = "bot"

    token_file: Path | None = Field(
        None,
        description="file holding the Discord bot token, mode 0600 (else env PETALS_BOT_TOKEN)",
    )
    command_prefix: str = Field(
        "!", min_length=1, max_length=5, description="prefix of questions and commands in chat"
    )
    guild_ids: IntList = Field(
        default_factory=list,
        description="guilds to register slash commands in at once (empty: global, which "
        "Discord may take up to an hour to show)",
    )
    channels: IntList = Field(
        default_factory=list,
        description="channel ids the bot answers in until /setup picks one (empty: any)",
    )
    setup_channel_name: str = Field(
        "ask-the-course-bot",
        min_length=1,
        max_length=100,
        description="name of the channel /setup creates or adopts",
    )
    moderator_roles: StrList = Field(
        default_factory=lambda: ["moderator"],
        description="role names allowed /breakall, /stats, /export, /reload, /setup "
        "(administrators always are)",
    )
    moderator_role_ids: IntList = Field(
        default_factory=list,
        description="role ids allowed the moderator commands; when set, moderator_roles "
        "(names, which anyone who can rename a role can match) is ignored",
    )
    alerts_channel_id: int | None = Field(
        None, description="channel id the Alertmanager webhook posts alerts to (unset: logged)"
    )
    max_new_tokens: int = Field(
        400, ge=1, le=4096, description="length limit of one answer, in tokens"
    )
    max_question_chars: int = Field(
        2000, ge=10, le=20000, description="longer questions are refused with a short reply"
    )
    stop_sequences: StrList = Field(
        default_factory=lambda: ["### User:", "### System:", "### Assistant:"],
        max_length=4,
        description="up to 4 texts (1-64 characters) that end the assistant's turn, besides "
        "the model's end token and its chat template's own",
    )
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="the assistant's instructions")
    temperature: float = Field(
        0.0, ge=0, le=2, description="sampling temperature; 0 answers greedily (reproducible)"
    )
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling when temperature > 0")
    edit_interval_s: float = Field(
        1.0, ge=0.05, le=10, description="seconds between two edits of one streamed message"
    )
    channel_edit_calls: int = Field(
        5,
        ge=1,
        le=50,
        description="edits and posts per channel_edit_window_s that all answers in one channel "
        "share (Discord: about 5 per 5 s)",
    )
    channel_edit_window_s: float = Field(
        5.0, ge=0, le=60, description="the window of channel_edit_calls, in seconds"
    )
    watchdog_timeout_s: float = Field(
        900.0,
        ge=0,
        le=86_400,
        description="post to alerts_channel_id that alerting is down when Alertmanager's "
        "always-firing Watchdog alert has not arrived for this long (0: off)",
    )
    course_dir: Path | None = Field(
        None,
        description="folder of course files (Markdown/text, PDF, .pptx) indexed at start and on "
        "/reload",
    )
    knowledge_top_k: int = Field(3, ge=0, le=10, description="course passages put in a prompt")
    knowledge_max_chars: int = Field(
        1800, ge=100, le=20000, description="most characters of course passages in one prompt"
    )
    max_history_turns: int = Field(
        8, ge=0, le=50, description="earlier question/answer pairs carried into a follow-up"
    )
    rate_limit_count: int = Field(
        5, ge=1, le=1000, description="questions one user may ask per rate_limit_window_s"
    )
    rate_limit_window_s: float = Field(60.0, gt=0, le=86400, description="rate limit window")
    max_concurrent: int = Field(
        2, ge=1, le=64, description="generations running on the swarm at once"
    )
    max_queue: int = Field(20, ge=0, le=1000, description="questions allowed to wait in line")
    first_token_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="give up when no first token arrives within this"
    )
    answer_timeout_s: float = Field(
        600.0, gt=0, le=7200, description="stop an answer that is still running after this"
    )
    status_url: str = Field(
        "http://127.0.0.1:9160/api/v1/state",
        description="the health service's /api/v1/state, read by /status",
    )
    database: Path = Field(
        Path("course-bot.sqlite3"),
        description="SQLite file (WAL) for answers, ratings and the channel chosen by /setup",
    )
    ab_model: str | None = Field(
        None,
        description="A/B mode: a second model (name or dir) on the same private swarm; each "
        "question is answered by both, side by side, and students' ratings are compared",
    )
    ab_dht_prefix: str | None = Field(None, description="DHT prefix of the A/B model's blocks")
    add_rating_reactions: bool = Field(
        True, description="put 👍 and 👎 under each answer so students see how to rate"
    )
    http_host: str = Field(
        "127.0.0.1", description="address of the bot's HTTP server (Alertmanager webhook, /metrics)"
    )
    http_port: int = Field(
        8095, ge=0, le=65535, description="its port (0: any free port; see the log)"
    )
    http_enabled: bool = Field(True, description="run the webhook and /metrics server")
    webhook_token_file: Path | None = Field(
        None,
        description="file (mode 0600) with a bearer token Alertmanager must send to "
        "/alertmanager (its http_config.authorization.credentials_file); unset: no check",
    )
    sync_commands: bool = Field(True, description="register the slash commands at start")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    # Test-only (hidden from --help): point discord.py at a fake Discord on 127.0.0.1.
    discord_api_base: str | None = Field(
        None, description="TESTS ONLY: REST base URL of a fake Discord on a loopback address"
    )
    discord_gateway_url: str | None = Field(
        None, description="TESTS ONLY: gateway websocket URL of a fake Discord on loopback"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_token_here(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "token" in data:
            raise ValueError(
                f"the bot token is never read from the config file or a flag: set env "
                f"{TOKEN_ENV} or token_file (a file with mode 0600)"
            )
        return data

    @field_validator("guild_ids", "channels", "moderator_role_ids", mode="before")
    @classmethod
    def _id_lists(cls, value: object) -> object:
        if isinstance(value, str):  # env vars and flags: "123, 456" or "123 456"
            return [part for part in re.split(r"[\s,]+", value) if part]
        return value

    @field_validator("moderator_roles", "stop_sequences", mode="before")
    @classmethod
    def _text_lists(cls, value: object) -> object:
        # Items may hold spaces ("### User:"), so a string is a JSON list or comma-separated.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list: {exc.msg}") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        for item in value:
            if not 1 <= len(item) <= 64:
                raise ValueError(f"each stop sequence must be 1-64 characters, got {item!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("discord_api_base", "discord_gateway_url")
    @classmethod
    def _loopback_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if parts.scheme not in ("http", "https", "ws", "wss") or not loopback:
            raise ValueError("test setting: only http(s)/ws(s) URLs on a loopback host")
        return value.rstrip("/")


_PLACEHOLDERS = {
    "changeme",
    "change-me",
    "token",
    "bot-token",
    "your-token",
    "your_token",
    "your-token-here",
    "your_token_here",
    "discord-token",
    "placeholder",
    "secret",
    "todo",
    "none",
    "null",
}
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{20,}$")


def check_token(token: str, origin: str) -> str:
    """Refuse empty, placeholder and malformed tokens; the message names ``origin``, never the
    token itself."""
    value = token.strip()
    lowered = value.lower()
    if not value:
        raise TokenError(f"the Discord bot token from {origin} is empty")
    if (
        lowered in _PLACEHOLDERS
        or lowered.startswith("<")
        or "your" in lowered
        or "changeme" in lowered.replace("-", "").replace("_", "")
        or len(set(value.replace(".", ""))) <= 2
    ):
        raise TokenError(
            f"the Discord bot token from {origin} is a placeholder; paste the bot's token from "
            "the Discord developer portal (Bot → Reset Token)"
        )
    if not _TOKEN_SHAPE.match(value):
        raise TokenError(
            f"the value from {origin} does not look like a Discord bot token (three "
            "dot-separated base64 parts, about 70 characters)"
        )
    return value


def load_token(settings: BotSettings, environ: Mapping[str, str] | None = None) -> str:
    """The bot token: env PETALS_BOT_TOKEN, else ``settings.token_file`` (owner-only mode)."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return check_token(env[TOKEN_ENV], f"env {TOKEN_ENV}")
    path = settings.token_file
    if path is None:
        raise TokenError(
            f"no Discord bot token: set env {TOKEN_ENV} or token_file (flag --token-file, env "
            "PETALS_BOT_TOKEN_FILE, or [bot] token_file in swarm.toml) to a file with mode 0600"
        )
    return check_token(read_secret_file(path, "token_file"), f"token_file {str(path)!r}")


def read_secret_file(path: Path, field: str) -> str:
    """A secret from a regular file that only its owner can read (mode 0600 or stricter)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise TokenError(f"{field} {str(path)!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TokenError(f"{field} {str(path)!r} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise TokenError(
            f"{field} {str(path)!r} has mode {mode:04o}: others can read the secret; "
            f"run `chmod 600 {path}`"
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"{field} {str(path)!r} cannot be read: {exc}") from None


def load_webhook_secret(settings: BotSettings) -> str | None:
    """The bearer token Alertmanager must send, if ``webhook_token_file`` is set."""
    if settings.webhook_token_file is None:
        return None
    secret = read_secret_file(settings.webhook_token_file, "webhook_token_file")
    if len(secret) < 16:
        raise TokenError("webhook_token_file: the secret must be at least 16 characters")
    return secret
