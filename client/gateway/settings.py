"""The gateway's settings: ``[gateway]`` table of swarm.toml, ``PETALS_GATEWAY_*``, flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from client.params import MAX_NEW_TOKENS_LIMIT
from swarm.settings_base import KitSettings

_HASH_ENTRY = re.compile(r"^[A-Za-z0-9_.@-]{1,64}:sha256:[0-9a-f]{64}$")


class GatewaySettings(KitSettings):
    model_config = SettingsConfigDict(env_prefix="PETALS_GATEWAY_", extra="forbid")
    toml_table: ClassVar[str] = "gateway"

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: any free)")
    model_name: str | None = Field(
        None,
        description="model id shown at /v1/models and accepted in requests (default: the "
        "swarm model's name)",
    )
    tokens_file: Path | None = Field(
        None,
        description="file of hashed bearer tokens, mode 0600 (create with `petalctl gateway "
        "token add NAME`)",
    )
    token_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hashed tokens as NAME:sha256:HEX, comma-separated (instead of a file)",
    )
    allow_anonymous: bool = Field(
        False, description="serve without bearer tokens (only for a trusted local network)"
    )
    rate_limit_per_minute: float = Field(
        60.0, gt=0, le=100000, description="requests per token per minute (sustained)"
    )
    rate_limit_burst: int = Field(
        20, ge=1, le=100000, description="requests a token may make at once before limiting"
    )
    max_concurrent_per_token: int = Field(
        8, ge=1, le=1024, description="generations one token may have running at once"
    )
    max_prompt_chars: int = Field(
        32000, ge=1, le=10_000_000, description="characters of prompt (all messages) per request"
    )
    max_new_tokens_limit: int = Field(
        1024,
        ge=1,
        le=MAX_NEW_TOKENS_LIMIT,
        description="largest max_tokens / max_new_tokens a request may ask for",
    )
    default_max_new_tokens: int = Field(
        256, ge=1, le=MAX_NEW_TOKENS_LIMIT, description="answer length when a request sets none"
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1024, le=100_000_000, description="largest request body accepted"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="other browser origins (scheme://host:port) allowed to call the API: CORS "
        "and the Origin check; the gateway's own origin is always allowed",
    )
    allow_query_token: bool = Field(
        False,
        description="accept ?token= on the WebSocket route, for browser frontends that cannot "
        "send headers (the token then appears in proxy and access logs)",
    )
    ws_idle_timeout_s: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="close a WebSocket that sends nothing for this long (frees its session "
        "and its slot of the token's concurrency limit)",
    )
    max_queued: int = Field(
        16,
        ge=0,
        le=10000,
        description="generations that may wait for a free slot of the swarm client "
        "(max_concurrent_streams); more get 503 with Retry-After",
    )
    web_session_hours: float = Field(
        12.0, gt=0, le=24 * 90, description="how long a web chat sign-in lasts"
    )
    keepalive_s: float = Field(
        10.0, gt=0, le=600, description="SSE comment every this many seconds while waiting"
    )

    @field_validator("token_hashes", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in re.split(r"[\s,]+", value) if part]
        return value

    @field_validator("token_hashes")
    @classmethod
    def _hash_entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not _HASH_ENTRY.match(entry):
                raise ValueError(
                    "each entry must be NAME:sha256:<64 hex digits> (from `petalctl gateway "
                    "token hash`), not a plain token"
                )
        return value

    @field_validator("default_max_new_tokens")
    @classmethod
    def _default_within_limit(cls, value: int, info: ValidationInfo) -> int:
        limit = info.data.get("max_new_tokens_limit")
        if limit is not None and value > limit:
            raise ValueError(f"must not exceed max_new_tokens_limit ({limit})")
        return value
