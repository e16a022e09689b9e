"""What the health service knows about the swarm at one moment, and pure functions that judge it.

A ``SwarmSnapshot`` is built from one read of the DHT (petals' ``get_remote_module_infos``) by the
collector; everything downstream (metrics, /api/v1/state, the status page, alerts) works from a
snapshot, so it can be tested with synthetic ones. Only trusted servers that are online serve our
students: untrusted peers never count toward coverage, and neither do joining or unreachable ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, get_args

from pydantic import BaseModel, Field, model_validator

# Petals announces JOINING, ONLINE and OFFLINE; "unreachable" is ours: the DHT still lists the
# server as online but the collector could not reach it.
ServerState = Literal["joining", "online", "offline", "unreachable"]
SERVER_STATES: tuple[ServerState, ...] = get_args(ServerState)


class ServerRecord(BaseModel, frozen=True):
    """One server announcing blocks of our model, as read from the DHT."""

    peer_id: str = Field(min_length=1, description="libp2p PeerID (base58, e.g. 12D3KooW...)")
    public_name: str | None = Field(description="the name the server announces, if any")
    state: ServerState
    start_block: int = Field(ge=0, description="first served block")
    end_block: int = Field(gt=0, description="one past the last served block: [start, end)")
    throughput: float | None = Field(ge=0, description="announced throughput (petals' RPS)")
    inference_rps: float | None = Field(ge=0)
    forward_rps: float | None = Field(ge=0)
    network_rps: float | None = Field(ge=0)
    cache_tokens_left: int | None = Field(ge=0, description="attention cache tokens still free")
    version: str | None = Field(description="petals version the server runs")
    torch_dtype: str | None
    quant_type: str | None
    using_relay: bool | None = Field(description="reachable only through a libp2p relay")
    trusted: bool = Field(description="the PeerID is on our trusted list")
    rtt_s: float | None = Field(
        default=None,
        ge=0,
        description="round trip of the ping through the swarm (None: no answer or not pinged)",
    )

    @model_validator(mode="after")
    def _blocks_ordered(self) -> ServerRecord:
        if self.end_block <= self.start_block:
            raise ValueError(
                f"server {self.peer_id}: end_block={self.end_block} must be greater than "
                f"start_block={self.start_block} (blocks are [start, end))"
            )
        return self

    @property
    def num_blocks(self) -> int:
        return self.end_block - self.start_block

    def serves(self, block: int) -> bool:
        return self.start_block <= block < self.end_block


class BootstrapRecord(BaseModel, frozen=True):
    """One configured bootstrap peer and whether it answered a DHT ping during the read."""

    address: str = Field(
        min_length=1, description="the configured multiaddr, /ip4/.../p2p/<PeerID>"
    )
    peer_id: str = Field(min_length=1, description="the PeerID at the end of the multiaddr")
    reachable: bool = Field(description="answered a DHT ping within the reachability timeout")
    rtt_s: float | None = Field(default=None, ge=0, description="round trip of the ping")


class SwarmSnapshot(BaseModel, frozen=True):
    """Every server announcing our model's blocks, plus what we expect of the swarm."""

    model: str = Field(min_length=1, description="model repository name, e.g. a Llama-70B repo")
    dht_prefix: str = Field(min_length=1, description="petals' DHT prefix for the model's blocks")
    num_blocks: int = Field(ge=1, description="transformer blocks in the model")
    replication_target: int = Field(ge=1, description="trusted online servers wanted per block")
    trusted_peer_ids: tuple[str, ...] = Field(description="configured trusted PeerIDs")
    servers: tuple[ServerRecord, ...]
    taken_at: float = Field(ge=0, description="unix time of the DHT read")
    refresh_seconds: float = Field(ge=0, description="how long the DHT read took")
    bootstraps: tuple[BootstrapRecord, ...] = Field(
        default=(), description="the configured bootstrap peers and whether each answered"
    )
    dht_peers: int | None = Field(
        default=None, ge=0, description="peers the collector's DHT client is connected to"
    )

    @model_validator(mode="after")
    def _unique_peers(self) -> SwarmSnapshot:
        repeated = [peer for peer, n in Counter(s.peer_id for s in self.servers).items() if n > 1]
        if repeated:
            raise ValueError(f"servers: each PeerID must appear once, repeated: {repeated}")
        return self


def _counts_for_coverage(server: ServerRecord) -> bool:
    return server.trusted and server.state == "online"


def block_servers(snapshot: SwarmSnapshot) -> list[list[ServerRecord]]:
    """Per block, the trusted online servers that serve it (blocks past num_blocks are ignored)."""
    blocks: list[list[ServerRecord]] = [[] for _ in range(snapshot.num_blocks)]
    for server in snapshot.servers:
        if _counts_for_coverage(server):
            for block in range(server.start_block, min(server.end_block, snapshot.num_blocks)):
                blocks[block].append(server)
    return blocks


def block_announcers(snapshot: SwarmSnapshot) -> list[list[ServerRecord]]:
    """Per block, every server announcing it, whatever its state or trust (for display)."""
    blocks: list[list[ServerRecord]] = [[] for _ in range(snapshot.num_blocks)]
    for server in snapshot.servers:
        for block in range(server.start_block, min(server.end_block, snapshot.num_blocks)):
            blocks[block].append(server)
    return blocks


def replication(snapshot: SwarmSnapshot) -> list[int]:
    """Per block, how many trusted online servers serve it."""
    return [len(servers) for servers in block_servers(snapshot)]


def uncovered_blocks(snapshot: SwarmSnapshot) -> list[int]:
    """Blocks no trusted online server serves: generation through the swarm cannot work."""
    return [block for block, n in enumerate(replication(snapshot)) if n == 0]


def coverage_ratio(snapshot: SwarmSnapshot) -> float:
    """Share of blocks (0-1) served by at least one trusted online server."""
    return 1 - len(uncovered_blocks(snapshot)) / snapshot.num_blocks


def min_replication(snapshot: SwarmSnapshot) -> int:
    """The fewest trusted online servers any block has (0 when a block is uncovered)."""
    return min(replication(snapshot))


def servers_by_state(snapshot: SwarmSnapshot, *, trusted: bool = True) -> dict[ServerState, int]:
    """Servers seen in the DHT per state (every state present), trusted ones by default."""
    counts: dict[ServerState, int] = dict.fromkeys(SERVER_STATES, 0)
    for server in snapshot.servers:
        if server.trusted == trusted:
            counts[server.state] += 1
    return counts


def trusted_states(snapshot: SwarmSnapshot) -> dict[ServerState, int]:
    """Trusted servers per state, counting configured trusted peers absent from the DHT as offline.

    Petals drops a server's DHT entries when they expire, so a server that died without announcing
    OFFLINE simply vanishes; counting it as offline keeps it visible.
    """
    counts = servers_by_state(snapshot, trusted=True)
    counts["offline"] += len(absent_trusted_peers(snapshot))
    return counts


def untrusted_servers(snapshot: SwarmSnapshot) -> list[ServerRecord]:
    """Peers not on the trusted list that announce our model's blocks: in a private swarm, an
    intrusion signal (whatever state they announce)."""
    return [server for server in snapshot.servers if not server.trusted]


def absent_trusted_peers(snapshot: SwarmSnapshot) -> list[str]:
    """Configured trusted PeerIDs with no record in the DHT at all."""
    seen = {server.peer_id for server in snapshot.servers}
    return [peer for peer in snapshot.trusted_peer_ids if peer not in seen]


def trusted_not_online(snapshot: SwarmSnapshot) -> dict[str, ServerState | None]:
    """Configured trusted PeerIDs that are not online: their state, or None when absent."""
    states = {server.peer_id: server.state for server in snapshot.servers}
    return {
        peer: states.get(peer) for peer in snapshot.trusted_peer_ids if states.get(peer) != "online"
    }


def trusted_online_peers(snapshot: SwarmSnapshot) -> set[str]:
    """Configured trusted PeerIDs that are online."""
    return set(snapshot.trusted_peer_ids) - set(trusted_not_online(snapshot))
