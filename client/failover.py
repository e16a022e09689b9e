"""Recovery at the kit's layer: which peers failed, routes that avoid them, and what it cost.

Petals' own recovery replays a session's history to a replacement server and fails there with
``AssertionError("Broken input cache")`` (petals issue #587; its fix, PR #523, was never merged),
retrying forever with ``max_retries=None``. The kit therefore opens petals' client with
``max_retries=1`` (a failed step raises at once) and recovers itself: the failing peer goes into a
``PeerQuarantine`` (kept off every route through the sequence manager's ``blocked_servers``), a
new route is opened among the other trusted servers, and ``SwarmSession`` replays the prompt and
the tokens generated so far as a fresh prefill (see client/session.py).

A quarantined peer is readmitted once it announces itself again: its DHT record then expires later
than the record we saw when it failed. A dead server's record lingers until it expires (2 x the
server's update_period), so without this every new request would be routed to the corpse.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from client.errors import GenerationFailed

logger = logging.getLogger(__name__)

# What a petals server says when its attention cache has no room for a session (memory_cache.py).
CAPACITY_MARKERS = ("AllocationFailed", "Could not allocate")


def is_capacity_error(exc: BaseException) -> bool:
    """The server refused a session because its attention cache is full (not a failure)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in CAPACITY_MARKERS)


def format_blocks(blocks: Iterable[int]) -> str:
    """``[4, 5, 6, 7, 9]`` -> ``"4-7, 9"`` (pure)."""
    ordered = sorted(set(blocks))
    parts: list[str] = []
    start = prev = None
    for block in ordered:
        if prev is not None and block == prev + 1:
            prev = block
            continue
        if start is not None:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = block
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


def round_up_reservation(tokens: int, quantum: int, limit: int) -> int:
    """Tokens to reserve for a session that needs ``tokens``: the next multiple of ``quantum``,
    never beyond ``limit`` (the context window). Pure."""
    if tokens <= 0:
        return min(quantum, limit)
    return min(limit, -(-tokens // quantum) * quantum)


@dataclass
class _Quarantined:
    since: float  # time.monotonic()
    blocks: str
    record_expiration: float | None  # the DHT record's expiration when the peer failed


class PeerQuarantine:
    """Peers that failed a step, kept off every route until they announce again (thread-safe)."""

    def __init__(self) -> None:
        self._peers: dict[str, _Quarantined] = {}
        self._lock = threading.Lock()

    def add(self, peer_id: str, blocks: str, record_expiration: float | None) -> bool:
        """Quarantine ``peer_id``; False if it already was."""
        with self._lock:
            if peer_id in self._peers:
                return False
            self._peers[peer_id] = _Quarantined(time.monotonic(), blocks, record_expiration)
            return True

    def readmit(self, latest_expirations: dict[str, float]) -> list[str]:
        """Readmit peers whose record now expires later than when they failed (they announced
        again); ``latest_expirations``: peer -> its newest record's expiration. Pure logic."""
        back = []
        with self._lock:
            for peer_id, entry in list(self._peers.items()):
                latest = latest_expirations.get(peer_id)
                if latest is None:
                    continue
                if entry.record_expiration is None or latest > entry.record_expiration:
                    back.append(peer_id)
                    del self._peers[peer_id]
        return back

    def discard(self, peer_id: str) -> None:
        with self._lock:
            self._peers.pop(peer_id, None)

    @property
    def peers(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        with self._lock:
            return peer_id in self._peers

    def __len__(self) -> int:
        with self._lock:
            return len(self._peers)


@dataclass
class RecoveryMetrics:
    """Counters of the client's recoveries (read by the gateway's and bot's /metrics)."""

    recoveries_total: int = 0
    recovery_seconds_sum: float = 0.0
    recovery_seconds: list[float] = field(default_factory=list)  # the last 1000 stalls
    failed_after_budget_total: int = 0
    quarantined_total: int = 0
    capacity_waits_total: int = 0
    waiting_for_capacity: int = 0  # requests waiting right now for a server's attention cache
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def recovered(self, seconds: float) -> None:
        with self._lock:
            self.recoveries_total += 1
            self.recovery_seconds_sum += seconds
            self.recovery_seconds = [*self.recovery_seconds[-999:], seconds]

    def gave_up(self) -> None:
        with self._lock:
            self.failed_after_budget_total += 1

    def quarantined(self) -> None:
        with self._lock:
            self.quarantined_total += 1

    def capacity_wait(self, delta: int) -> None:
        with self._lock:
            if delta > 0:
                self.capacity_waits_total += 1
            self.waiting_for_capacity += delta

    def samples(self) -> dict[str, float]:
        """Prometheus-style names (``petals_client_``) and values of the counters and gauges."""
        with self._lock:
            return {
                "petals_client_recoveries_total": self.recoveries_total,
                "petals_client_recovery_seconds_sum": self.recovery_seconds_sum,
                "petals_client_requests_failed_after_recovery_budget_total": (
                    self.failed_after_budget_total
                ),
                "petals_client_peers_quarantined_total": self.quarantined_total,
                "petals_client_capacity_waits_total": self.capacity_waits_total,
                "petals_client_requests_waiting_for_capacity": self.waiting_for_capacity,
            }


class FailureTracker:
    """Learns which peer petals blamed for a failed request, per thread.

    Petals' ``RemoteSequenceManager.on_request_failure(peer_id)`` is called in the thread that ran
    the failed step; we wrap it on the instance so the recovering thread knows whom to quarantine.
    """

    def __init__(self, manager: Any) -> None:
        self._local = threading.local()
        original = manager.on_request_failure

        def on_request_failure(peer_id: Any) -> None:
            if peer_id is not None:
                self._local.peer = str(peer_id)
            original(peer_id)

        manager.on_request_failure = on_request_failure

    def take(self) -> str | None:
        """The peer blamed for this thread's last failure (and forget it)."""
        peer = getattr(self._local, "peer", None)
        self._local.peer = None
        return peer


class RouteFailed(Exception):
    """Opening a server session failed; ``peer_id`` is the server that did not answer."""

    def __init__(self, peer_id: str, blocks: str, cause: BaseException) -> None:
        super().__init__(f"{peer_id} (blocks {blocks}): {cause!r}")
        self.peer_id, self.blocks, self.cause = peer_id, blocks, cause


def missing_blocks_error(exc: BaseException, quarantined: Sequence[str]) -> GenerationFailed:
    """The clear error when no trusted replica of some blocks is left."""
    import re

    found = re.search(r"blocks (.*?) are online", str(exc))
    blocks = [int(b) for b in re.findall(r"\d+", found.group(1))] if found else []
    named = format_blocks(blocks) if blocks else str(exc)
    peers = ", ".join("..." + p[-6:] for p in quarantined)
    tail = f" (failed and quarantined: {peers})" if quarantined else ""
    return GenerationFailed(f"no trusted server is online for blocks {named}{tail}")
