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
        3, ge=1, le=100, description="attempts per server step before a request fails"
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
        description="seconds after which an idle conversation's session is reopened instead of "
        "continued (petals servers drop sessions idle for 300 s by default)",
    )
