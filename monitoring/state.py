"""The swarm's state as /api/v1/state shows it (health.petals.dev's idea: per model, each block's
servers and whether every block has an online server). Built by a pure function from the
refresher's and the probe's status; the status page renders the same model."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, Field

from monitoring import snapshot as swarm
from monitoring.history import BootstrapMark, History, Mark, ServerMark
from monitoring.metrics import ProbeFailureReason, ProbeStatus
from monitoring.refresher import RefreshStatus

BlockStatus = Literal["uncovered", "under_replicated", "ok"]
SwarmHealth = Literal["healthy", "degraded", "broken"]


class BlockServer(BaseModel):
    peer_id: str
    public_name: str | None
    state: swarm.ServerState
    trusted: bool


class BlockState(BaseModel):
    index: int
    replication: int = Field(description="trusted online servers serving this block")
    status: BlockStatus
    servers: list[BlockServer] = Field(description="every server announcing this block")


class ServerRow(BaseModel):
    peer_id: str
    public_name: str | None
    state: swarm.ServerState
    trusted: bool
    start_block: int
    end_block: int
    throughput: float | None
    inference_rps: float | None
    forward_rps: float | None
    network_rps: float | None
    cache_tokens_left: int | None
    version: str | None
    torch_dtype: str | None
    quant_type: str | None
    using_relay: bool | None


class UntrustedServer(BaseModel):
    peer_id: str
    public_name: str | None
    state: swarm.ServerState
    start_block: int
    end_block: int


class MissingTrustedServer(BaseModel):
    peer_id: str
    public_name: str | None = Field(description="the name it announces, if it is in the DHT")
    state: swarm.ServerState | None = Field(description="state in the DHT; null when absent")


class Coverage(BaseModel):
    health: SwarmHealth = Field(
        description="broken: a block has no trusted online server; degraded: a block is below "
        "the replication target or an untrusted peer announces blocks; healthy otherwise"
    )
    ratio: float = Field(ge=0, le=1)
    covered_blocks: int
    uncovered_blocks: list[int]
    min_replication: int
    replication_target: int


class RefreshState(BaseModel):
    interval_s: float
    ok: bool = Field(description="the last read of the DHT succeeded")
    fresh: bool = Field(description="the last good read is recent enough for /healthz")
    last_success_at: float | None
    age_s: float | None = Field(description="seconds since the last good read")
    last_duration_s: float | None
    errors_total: int
    last_error: str | None


class ProbeState(BaseModel):
    runs_total: int
    failures_total: int
    last_success_at: float | None
    last_ttft_s: float | None
    last_tokens_per_s: float | None
    last_failure_at: float | None
    last_failure_reason: ProbeFailureReason | None
    last_failure_detail: str | None


class ServerHistoryMark(BaseModel):
    at: float = Field(description="unix time of the read")
    state: ServerMark = Field(
        description="the server's state in that read; absent: no record in the DHT; unknown: "
        "the read failed"
    )
    rtt_s: float | None = Field(description="ping round trip in seconds; null: no answer")


class BootstrapHistoryMark(BaseModel):
    at: float = Field(description="unix time of the read")
    state: BootstrapMark = Field(description="unknown: the read failed for another reason")
    rtt_s: float | None = Field(description="DHT ping round trip in seconds; null: no answer")


class ServerHistory(BaseModel):
    peer_id: str
    public_name: str | None = Field(description="the last name it announced")
    trusted: bool
    marks: list[ServerHistoryMark] = Field(description="one per refresh, oldest first")


class BootstrapHistory(BaseModel):
    address: str = Field(description="the configured multiaddr")
    peer_id: str
    marks: list[BootstrapHistoryMark] = Field(description="one per refresh, oldest first")


class HistoryState(BaseModel):
    points: int = Field(description="the most marks kept per server and per bootstrap peer")
    servers: list[ServerHistory] = Field(
        description="every server seen in the DHT within the last `points` refreshes; trusted "
        "first, then by name"
    )
    bootstraps: list[BootstrapHistory] = Field(description="every configured bootstrap peer")


class SwarmState(BaseModel):
    """Response of GET /api/v1/state."""

    model: str
    dht_prefix: str
    num_blocks: int
    taken_at: float
    coverage: Coverage
    blocks: list[BlockState]
    servers: list[ServerRow]
    untrusted_servers: list[UntrustedServer]
    trusted_missing: list[MissingTrustedServer]
    refresh: RefreshState
    probe: ProbeState
    history: HistoryState


class NotReady(BaseModel):
    """Response of GET /api/v1/state (503) before the first good read of the DHT."""

    detail: str
    refresh: RefreshState
    probe: ProbeState
    history: HistoryState


def _marks(marks: tuple[Mark, ...]) -> list[dict[str, object]]:
    return [{"at": m.at, "state": m.state, "rtt_s": m.rtt_s} for m in marks]


def history_state(history: History) -> HistoryState:
    return HistoryState.model_validate(
        {
            "points": history.points,
            "servers": [
                {
                    "peer_id": t.peer_id,
                    "public_name": t.public_name,
                    "trusted": t.trusted,
                    "marks": _marks(t.marks),
                }
                for t in history.servers
            ],
            "bootstraps": [
                {"address": b.address, "peer_id": b.peer_id, "marks": _marks(b.marks)}
                for b in history.bootstraps
            ],
        }
    )


def refresh_state(status: RefreshStatus, stale_after_intervals: float, now: float) -> RefreshState:
    return RefreshState(
        interval_s=status.interval_s,
        ok=status.last_ok,
        fresh=status.is_fresh(stale_after_intervals, now),
        last_success_at=status.last_success_at,
        age_s=status.age_s(now),
        last_duration_s=status.last_duration_s,
        errors_total=status.errors_total,
        last_error=status.last_error,
    )


def _block_status(replication: int, target: int) -> BlockStatus:
    if replication == 0:
        return "uncovered"
    return "under_replicated" if replication < target else "ok"


def _server_order(server: swarm.ServerRecord) -> tuple[bool, int, str]:
    return (not server.trusted, server.start_block, server.peer_id)


def swarm_state(
    snap: swarm.SwarmSnapshot,
    refresh: RefreshState,
    probe: ProbeStatus,
    history: History | None = None,
) -> SwarmState:
    replication = swarm.replication(snap)
    uncovered = [block for block, n in enumerate(replication) if n == 0]
    untrusted = swarm.untrusted_servers(snap)
    lowest = min(replication)
    if uncovered:
        health: SwarmHealth = "broken"
    elif lowest < snap.replication_target or untrusted:
        health = "degraded"
    else:
        health = "healthy"
    announcers = swarm.block_announcers(snap)
    names = {s.peer_id: s.public_name for s in snap.servers}
    return SwarmState(
        model=snap.model,
        dht_prefix=snap.dht_prefix,
        num_blocks=snap.num_blocks,
        taken_at=snap.taken_at,
        coverage=Coverage(
            health=health,
            ratio=swarm.coverage_ratio(snap),
            covered_blocks=snap.num_blocks - len(uncovered),
            uncovered_blocks=uncovered,
            min_replication=lowest,
            replication_target=snap.replication_target,
        ),
        blocks=[
            BlockState(
                index=block,
                replication=replication[block],
                status=_block_status(replication[block], snap.replication_target),
                servers=[
                    BlockServer(
                        peer_id=s.peer_id,
                        public_name=s.public_name,
                        state=s.state,
                        trusted=s.trusted,
                    )
                    for s in sorted(announcers[block], key=_server_order)
                ],
            )
            for block in range(snap.num_blocks)
        ],
        servers=[
            ServerRow.model_validate(s.model_dump())
            for s in sorted(snap.servers, key=_server_order)
        ],
        untrusted_servers=[
            UntrustedServer(
                peer_id=s.peer_id,
                public_name=s.public_name,
                state=s.state,
                start_block=s.start_block,
                end_block=s.end_block,
            )
            for s in sorted(untrusted, key=lambda s: s.peer_id)
        ],
        trusted_missing=[
            MissingTrustedServer(peer_id=peer, public_name=names.get(peer), state=state)
            for peer, state in swarm.trusted_not_online(snap).items()
        ],
        refresh=refresh,
        probe=probe_state(probe),
        history=history_state(History() if history is None else history),
    )


def probe_state(probe: ProbeStatus) -> ProbeState:
    return ProbeState.model_validate(dataclasses.asdict(probe))
