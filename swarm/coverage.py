"""Pure functions over servers' DHT announcements: per-server records, block coverage, tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

STATES = ("online", "joining", "offline")


@dataclass(frozen=True)
class ServerAnnouncement:
    """What one server announces in the DHT about the blocks it serves."""

    peer_id: str
    state: str  # online | joining | offline
    start_block: int
    end_block: int  # exclusive
    throughput: float | None = None
    public_name: str | None = None
    version: str | None = None
    network_rps: float | None = None
    forward_rps: float | None = None
    inference_rps: float | None = None
    torch_dtype: str | None = None
    quant_type: str | None = None
    using_relay: bool | None = None
    cache_tokens_left: int | None = None


def merge_announcements(per_block: Sequence[dict[str, dict[str, Any]]]) -> list[ServerAnnouncement]:
    """Fold per-block ``{peer_id: info}`` maps into one record per server.

    A server announces its whole span on every block it holds; when start/end are missing (old
    servers), the span is the blocks where it was seen.
    """
    seen: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for block, servers in enumerate(per_block):
        for peer_id, info in servers.items():
            seen.setdefault(peer_id, (info, []))[1].append(block)
    records = []
    for peer_id, (info, blocks) in seen.items():
        start = info.get("start_block")
        end = info.get("end_block")
        if start is None or end is None:
            start, end = min(blocks), max(blocks) + 1
        fields = {k: v for k, v in info.items() if k not in ("start_block", "end_block")}
        records.append(
            ServerAnnouncement(peer_id=peer_id, start_block=start, end_block=end, **fields)
        )
    return sorted(records, key=lambda r: (r.start_block, r.end_block, r.peer_id))


def servers_per_block(
    records: Iterable[ServerAnnouncement],
    num_blocks: int,
    *,
    trusted: Iterable[str] | None = None,
    states: Sequence[str] = ("online",),
) -> list[list[ServerAnnouncement]]:
    """For each block, the servers in ``states`` (and in ``trusted`` when given) serving it."""
    allowed = set(trusted) if trusted is not None else None
    table: list[list[ServerAnnouncement]] = [[] for _ in range(num_blocks)]
    for record in records:
        if record.state not in states or (allowed is not None and record.peer_id not in allowed):
            continue
        for block in range(max(0, record.start_block), min(num_blocks, record.end_block)):
            table[block].append(record)
    return table


def short_peer(peer_id: str) -> str:
    return f"{peer_id[:6]}…{peer_id[-4:]}" if len(peer_id) > 12 else peer_id


def render_status(
    records: Sequence[ServerAnnouncement],
    num_blocks: int,
    *,
    dht_prefix: str,
    trusted: Iterable[str] | None = None,
) -> str:
    """A terminal table: each server (name, PeerID, blocks, state, throughput, trusted), then the
    blocks grouped into runs with the same online server count."""
    trusted_set = set(trusted) if trusted is not None else None
    rows = [("SERVER", "PEER ID", "BLOCKS", "STATE", "THROUGHPUT", "TRUSTED")]
    for r in records:
        is_trusted = "-" if trusted_set is None else ("yes" if r.peer_id in trusted_set else "NO")
        rows.append(
            (
                r.public_name or "-",
                short_peer(r.peer_id),
                f"{r.start_block}:{r.end_block}",
                r.state.upper(),
                "-" if r.throughput is None else f"{r.throughput:.1f} rps",
                is_trusted,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"model {dht_prefix}: {num_blocks} blocks, {len(records)} server(s) announcing"]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    per_block = servers_per_block(records, num_blocks, trusted=trusted_set)
    lines.append("")
    counts = [len(servers) for servers in per_block]
    start = 0
    for i in range(1, num_blocks + 1):
        if i == num_blocks or counts[i] != counts[start]:
            label = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            mark = "UNCOVERED" if counts[start] == 0 else f"{counts[start]} online server(s)"
            lines.append(f"blocks {label}: {mark}")
            start = i
    covered = sum(1 for c in counts if c)
    lines.append(f"coverage: {covered}/{num_blocks} blocks served")
    return "\n".join(lines)
