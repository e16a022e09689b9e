"""Settings of the health service (`PETALS_HEALTH_*` environment variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# 9160 keeps clear of the ports the kit's hosts already use: Prometheus 9090, Alertmanager
# 9093/9094, node_exporter 9100, the Discord bot's Alertmanager webhook 8095.
DEFAULT_PORT = 9160


class HealthSettings(BaseSettings):
    """How the health service listens, how often it reads the swarm and what it expects of it."""

    model_config = SettingsConfigDict(env_prefix="PETALS_HEALTH_", extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        description="address to listen on; Prometheus scrapes /metrics here (use the host's "
        "private address, or 0.0.0.0 behind a firewall, to let a remote Prometheus in)",
    )
    port: int = Field(
        default=DEFAULT_PORT, ge=1, le=65535, description="TCP port for /metrics, the API and page"
    )
    refresh_interval_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="seconds between two reads of the swarm's DHT",
    )
    stale_after_intervals: float = Field(
        default=3.0,
        ge=1,
        le=100,
        description="/healthz answers 503 when the last good DHT read is older than this many "
        "refresh intervals",
    )
    probe_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="seconds between two probe generations through the trusted client",
    )
    probe_tokens: int = Field(
        default=16, ge=1, le=512, description="new tokens each probe generation asks for"
    )
    replication_target: int = Field(
        default=1,
        ge=1,
        le=64,
        description="trusted online servers wanted for every block; fewer raises a warning",
    )
    page_refresh_s: float = Field(
        default=5.0,
        ge=1,
        le=600,
        description="seconds between two updates of the status page in the browser",
    )
