"""Settings of the health service: flags, `PETALS_HEALTH_*` environment variables and the
`[health]` table of swarm.toml (which swarm to watch comes from `SwarmSettings`, `[swarm]`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from monitoring.history import DEFAULT_POINTS
from swarm.settings_base import KitSettings

# 9160 keeps clear of the ports the kit's hosts already use: Prometheus 9090, Alertmanager
# 9093/9094, node_exporter 9100, the Discord bot's Alertmanager webhook 8095.
DEFAULT_PORT = 9160


class HealthSettings(KitSettings):
    """How the health service listens, how often it reads the swarm and what it expects of it."""

    model_config = SettingsConfigDict(env_prefix="PETALS_HEALTH_", extra="forbid")
    toml_table: ClassVar[str] = "health"

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
        default=16,
        ge=2,
        le=512,
        description="new tokens each probe generation asks for (at least 2: tokens/s is measured "
        "after the first token)",
    )
    replication_target: int = Field(
        default=1,
        ge=1,
        le=64,
        description="trusted online servers wanted for every block; fewer raises a warning",
    )
    history_points: int = Field(
        default=DEFAULT_POINTS,
        ge=1,
        le=1000,
        description="refreshes remembered per server and per bootstrap peer for the status "
        "page's reachability strips and /api/v1/state's history",
    )
    page_refresh_s: float = Field(
        default=5.0,
        ge=1,
        le=600,
        description="seconds between two updates of the status page in the browser",
    )
    num_blocks: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="transformer blocks in the model; unset: read from the model directory's "
        "config.json or the kit's table of known models",
    )
    reachability_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="seconds a server announced ONLINE has to answer a ping through the swarm's "
        "DHT before the service calls it unreachable",
    )
    probe: bool = Field(
        default=True,
        description="run the probe: generate through the trusted client path every "
        "probe_interval_s (needs the model's tokenizer on this host)",
    )
    probe_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="seconds one probe generation may take before it counts as a timeout",
    )
    probe_prompt: str = Field(
        default="A private swarm of GPUs serves",
        min_length=1,
        max_length=2000,
        description="text the probe continues (never a student's prompt)",
    )
