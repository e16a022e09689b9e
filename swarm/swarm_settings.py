"""The swarm's settings: model, DHT prefix, bootstrap peers, and which servers to trust.

Read from the ``[swarm]`` table of swarm.toml, ``PETALS_*`` environment variables and flags.
Petals' own default for ``initial_peers`` is the PUBLIC swarm; this object never falls back to it:
an empty list is an error at the point where peers are needed, and a public bootstrap peer is
refused outright.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from swarm.addresses import parse_multiaddr, parse_private_bootstrap, validate_peer_id
from swarm.errors import ConfigError
from swarm.settings_base import KitSettings

TorchDtype = Literal["auto", "float32", "float16", "bfloat16"]
QuantType = Literal["none", "int8", "nf4"]

_DHT_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

AddressList = Annotated[list[str], NoDecode]


def _split_list(value: object) -> object:
    """Accept lists, or strings separated by commas/whitespace (env vars, flags)."""
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,]+", value) if part]
    return value


def derive_dht_prefix(model: str) -> str:
    """A DHT prefix from a model name or dir: its last path part, with '.' (petals' UID
    delimiter) and other unsafe characters replaced by '-'."""
    name = Path(model.rstrip("/")).name or model
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-")
    return prefix or "model"


class SwarmSettings(KitSettings):
    """Settings shared by every process of one private swarm (servers, clients, monitor)."""

    model_config = SettingsConfigDict(env_prefix="PETALS_", extra="forbid")

    model: str = Field(
        "petals-team/StableBeluga2",
        description="Hugging Face model name or local model directory",
    )
    dht_prefix: str | None = Field(
        None,
        description="name of the model's blocks in the DHT; servers and clients must agree "
        "(derived from the model name when unset)",
    )
    torch_dtype: TorchDtype = Field("auto", description="dtype of the served blocks")
    quant_type: QuantType = Field(
        "none",
        description="weight quantization of served blocks: none, int8 or nf4 (CPU too)",
    )
    initial_peers: AddressList = Field(
        default_factory=list,
        description="bootstrap multiaddrs of the PRIVATE swarm, each ending in /p2p/<PeerID>",
    )
    trusted_servers: AddressList = Field(
        default_factory=list,
        description="PeerIDs of servers clients may route through (empty: refuse to route)",
    )
    host_maddrs: AddressList = Field(
        default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"],
        description="multiaddrs this peer listens on (port 0: any free port)",
    )
    announce_maddrs: AddressList = Field(
        default_factory=list,
        description="multiaddrs other peers should dial (default: the listen addresses)",
    )
    request_timeout: float = Field(30.0, gt=0, le=600, description="seconds per RPC to a server")

    @field_validator(
        "initial_peers", "trusted_servers", "host_maddrs", "announce_maddrs", mode="before"
    )
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("initial_peers")
    @classmethod
    def _private_peers(cls, value: list[str]) -> list[str]:
        return [str(parse_private_bootstrap(item)) for item in value]

    @field_validator("trusted_servers")
    @classmethod
    def _peer_ids(cls, value: list[str]) -> list[str]:
        return [validate_peer_id(item, field="trusted_servers entry") for item in value]

    @field_validator("host_maddrs", "announce_maddrs")
    @classmethod
    def _maddrs(cls, value: list[str]) -> list[str]:
        return [str(parse_multiaddr(item, field="listen/announce address")) for item in value]

    @field_validator("dht_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not _DHT_PREFIX_RE.match(value):
            raise ValueError(
                "must be letters, digits, '-' or '_' (no '.', which petals uses as a delimiter)"
            )
        return value

    @property
    def effective_dht_prefix(self) -> str:
        return self.dht_prefix or derive_dht_prefix(self.model)

    def require_initial_peers(self) -> list[str]:
        """The private bootstrap peers, or a ConfigError that says what to set."""
        if not self.initial_peers:
            raise ConfigError(
                "no bootstrap peers: set initial_peers (flag --initial-peers, env "
                "PETALS_INITIAL_PEERS, or [swarm] initial_peers in swarm.toml) to your bootstrap "
                "peer's multiaddr; this kit never falls back to Petals' public swarm"
            )
        return list(self.initial_peers)

    def require_trusted_servers(self) -> list[str]:
        if not self.trusted_servers:
            raise ConfigError(
                "no trusted servers: set trusted_servers (flag --trusted-servers, env "
                "PETALS_TRUSTED_SERVERS, or [swarm] trusted_servers in swarm.toml) to your "
                "servers' PeerIDs; without it a client could route through anyone's server"
            )
        return list(self.trusted_servers)
