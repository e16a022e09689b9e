"""Synthetic swarm snapshots for the monitoring tests (no DHT, no petals)."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

from monitoring.snapshot import ServerRecord, ServerState, SwarmSnapshot

MODEL = "petals-team/StableBeluga2"
DHT_PREFIX = "StableBeluga2-hf"
LLAMA_70B_BLOCKS = 80


_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def peer(name: str) -> str:
    """A stable PeerID-looking string (Ed25519 PeerIDs are 52 base58 characters)."""
    number = int.from_bytes(hashlib.sha256(name.encode()).digest(), "big")
    tail = ""
    while len(tail) < 44:
        number, digit = divmod(number, 58)
        tail += _BASE58[digit]
    return "12D3KooW" + tail


def server(
    name: str,
    start: int,
    end: int,
    *,
    state: ServerState = "online",
    trusted: bool = True,
    **fields: Any,
) -> ServerRecord:
    values: dict[str, Any] = {
        "peer_id": peer(name),
        "public_name": name,
        "state": state,
        "start_block": start,
        "end_block": end,
        "throughput": 420.5,
        "inference_rps": 310.0,
        "forward_rps": 2100.0,
        "network_rps": 950.0,
        "cache_tokens_left": 65536,
        "version": "2.2.0.post1",
        "torch_dtype": "bfloat16",
        "quant_type": "nf4",
        "using_relay": False,
        "trusted": trusted,
    }
    values.update(fields)
    return ServerRecord(**values)


def snapshot(
    *servers: ServerRecord,
    num_blocks: int = 8,
    replication_target: int = 1,
    trusted: tuple[str, ...] | None = None,
    model: str = MODEL,
) -> SwarmSnapshot:
    """A snapshot; by default every trusted server in it is on the trusted list."""
    if trusted is None:
        trusted = tuple(s.peer_id for s in servers if s.trusted)
    return SwarmSnapshot(
        model=model,
        dht_prefix=DHT_PREFIX,
        num_blocks=num_blocks,
        replication_target=replication_target,
        trusted_peer_ids=trusted,
        servers=servers,
        taken_at=time.time(),
        refresh_seconds=0.05,
    )


class MutableFetch:
    """A fetch function the test steers: returns the current snapshot or raises the set error."""

    def __init__(self, current: SwarmSnapshot | None = None) -> None:
        self._lock = threading.Lock()
        self._snapshot = current
        self._error: Exception | None = None
        self.calls = 0

    def set(self, current: SwarmSnapshot) -> None:
        with self._lock:
            self._snapshot, self._error = current, None

    def fail(self, error: Exception) -> None:
        with self._lock:
            self._error = error

    def __call__(self) -> SwarmSnapshot:
        with self._lock:
            self.calls += 1
            if self._error is not None:
                raise self._error
            if self._snapshot is None:
                raise RuntimeError("no snapshot set")
            return self._snapshot
