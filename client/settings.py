"""Settings of a swarm client process (chat CLI, gateway, bot): ``[client]``, ``PETALS_CLIENT_*``.

Which swarm to reach and whom to trust stay in ``SwarmSettings``; this holds how the client
behaves: retries, timeouts, concurrency, context window, chat template and session reuse.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from client.templates import ChatStyle
from swarm.settings_base import KitSettings


class ClientSettings(KitSettings):
    model_config = SettingsConfigDict(env_prefix="PETALS_CLIENT_", extra="forbid")
    toml_table: ClassVar[str] = "client"

    chat_template: ChatStyle = Field(
        "auto",
        description="prompt format: auto (from the model name, else the tokenizer's), tokenizer, "
        "llama2, llama3 or stablebeluga",
    )
    max_retries: int = Field(
        3,
        ge=1,
        le=100,
        description="recoveries per request: after a failed step the failing server is "
        "quarantined, a new route opened and the text so far replayed (petals' own retries are "
        "off: its replay is broken, petals issue #587)",
    )
    recovery_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="seconds from a request's first failure after which it fails instead of "
        "recovering again",
    )
    step_timeout: float = Field(
        30.0,
        gt=0,
        le=600,
        description="seconds a server may take for a session's first step of a turn (the "
        "prefill of the prompt); a slower (hung) server counts as failed",
    )
    token_timeout: float = Field(
        5.0,
        gt=0,
        le=600,
        description="seconds a server may take for a one-token step after the prefill; a slower "
        "(hung or crashed) server counts as failed. This bounds the stall a crash causes",
    )
    connect_timeout: float = Field(
        5.0, gt=0, le=120, description="seconds to open a connection to a server"
    )
    max_concurrent_streams: int = Field(
        32, ge=1, le=1024, description="generations running at once; more wait for a slot"
    )
    context_window: int | None = Field(
        None,
        ge=16,
        description="tokens of prompt plus answer (default and upper bound: the model's "
        "max_position_embeddings)",
    )
    reuse_sessions: bool = Field(
        True,
        description="continue a conversation's inference session across turns (the servers keep "
        "its attention cache, so the history is not sent again)",
    )
    session_idle_timeout: float = Field(
        240.0,
        gt=0,
        le=3600,
        description="seconds after which an idle session's server-side attention cache is "
        "released; its next turn reopens it and replays the history (petals servers drop "
        "sessions idle for 300 s by default)",
    )
    session_reserve_quantum: int = Field(
        256,
        ge=1,
        le=131072,
        description="a session reserves prompt + max_new_tokens rounded up to a multiple of "
        "this (not the whole context window); a longer conversation re-opens a larger one",
    )
    capacity_wait_timeout: float = Field(
        300.0,
        ge=0,
        le=3600,
        description="seconds a request waits, queued, while the servers' attention caches are "
        "full, before it fails",
    )
