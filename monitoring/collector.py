"""Read the private swarm into a ``SwarmSnapshot``: the refresher's ``fetch``.

One client-mode DHT (a child process plus a p2pd) lives as long as the service; a failed read
shuts it down and the next read joins the swarm again. Reachability is checked inside the swarm:
every server that announces itself ONLINE is pinged through that DHT's own p2p connection (petals'
``rpc_ping``), and one that does not answer within the timeout is reported "unreachable" — no
outside service is asked. Each configured bootstrap peer gets a DHT ping of its own.

A read that reaches neither a bootstrap peer nor an online server has not seen the swarm: an
empty answer from a DHT that lost all its peers looks exactly like "no servers". Such a read fails
(the service reports itself not-up instead of "every block uncovered") and drops the DHT client, so
the next read joins the swarm again and notices by itself when the peers come back.
``build_snapshot`` is the pure part: records and round-trip times in, snapshot out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monitoring.refresher import SwarmNotSeen
from monitoring.snapshot import BootstrapRecord, ServerRecord, ServerState, SwarmSnapshot
from swarm.coverage import ServerAnnouncement
from swarm.errors import SwarmUnavailable

if TYPE_CHECKING:
    from hivemind import DHT

    from swarm.swarm_settings import SwarmSettings

log = logging.getLogger(__name__)

# Petals announces these three; anything else from a foreign or future server reads as joining
# (announced, not serving) rather than failing the whole read.
_ANNOUNCED_STATES: dict[str, ServerState] = {
    "joining": "joining",
    "online": "online",
    "offline": "offline",
}


def _non_negative(value: float | None) -> float | None:
    # A peer controls what it announces; a negative or NaN number must not break validation.
    if value is None or not value >= 0 or math.isinf(value):
        return None
    return float(value)


def server_record(
    announcement: ServerAnnouncement, *, trusted: bool, rtt_s: float | None
) -> ServerRecord:
    """One DHT announcement as a ``ServerRecord``; ONLINE with no ping answer is unreachable.

    ``rtt_s`` is the ping's round trip: ``math.inf`` when the server did not answer, None when
    it was not pinged.
    """
    state = _ANNOUNCED_STATES.get(announcement.state, "joining")
    if state == "online" and rtt_s is not None and math.isinf(rtt_s):
        state = "unreachable"
    cache = announcement.cache_tokens_left
    answered = rtt_s is not None and not math.isinf(rtt_s) and rtt_s >= 0
    return ServerRecord(
        peer_id=announcement.peer_id,
        public_name=announcement.public_name,
        state=state,
        start_block=announcement.start_block,
        end_block=announcement.end_block,
        throughput=_non_negative(announcement.throughput),
        inference_rps=_non_negative(announcement.inference_rps),
        forward_rps=_non_negative(announcement.forward_rps),
        network_rps=_non_negative(announcement.network_rps),
        cache_tokens_left=cache if cache is not None and cache >= 0 else None,
        version=announcement.version,
        torch_dtype=announcement.torch_dtype,
        quant_type=announcement.quant_type,
        using_relay=announcement.using_relay,
        trusted=trusted,
        rtt_s=rtt_s if answered else None,
    )


def _valid_span(announcement: ServerAnnouncement) -> bool:
    return 0 <= announcement.start_block < announcement.end_block


def build_snapshot(
    announcements: Iterable[ServerAnnouncement],
    rtts: Mapping[str, float],
    *,
    model: str,
    dht_prefix: str,
    num_blocks: int,
    replication_target: int,
    trusted_peer_ids: Sequence[str],
    taken_at: float,
    refresh_seconds: float,
    bootstraps: Sequence[BootstrapRecord] = (),
    dht_peers: int | None = None,
) -> SwarmSnapshot:
    """A snapshot from one read of the DHT (pure). ``rtts`` maps pinged PeerIDs to round trips
    in seconds, ``math.inf`` for no answer; records with an impossible block span are dropped."""
    trusted = set(trusted_peer_ids)
    servers = []
    for announcement in announcements:
        if not _valid_span(announcement):
            log.warning(
                "ignoring %s: it announces blocks [%s, %s)",
                announcement.peer_id,
                announcement.start_block,
                announcement.end_block,
            )
            continue
        servers.append(
            server_record(
                announcement,
                trusted=announcement.peer_id in trusted,
                rtt_s=rtts.get(announcement.peer_id),
            )
        )
    return SwarmSnapshot(
        model=model,
        dht_prefix=dht_prefix,
        num_blocks=num_blocks,
        replication_target=replication_target,
        trusted_peer_ids=tuple(trusted_peer_ids),
        servers=tuple(servers),
        taken_at=taken_at,
        refresh_seconds=refresh_seconds,
        bootstraps=tuple(bootstraps),
        dht_peers=dht_peers,
    )


def bootstrap_records(
    initial_peers: Sequence[str], rtts: Mapping[str, float]
) -> list[BootstrapRecord]:
    """One record per configured bootstrap multiaddr; ``rtts`` maps PeerIDs to round trips
    (``math.inf`` or missing: no answer)."""
    records = []
    for address in initial_peers:
        peer_id = peer_id_of(address)
        rtt = rtts.get(peer_id, math.inf)
        reachable = not math.isinf(rtt) and rtt >= 0
        records.append(
            BootstrapRecord(
                address=address,
                peer_id=peer_id,
                reachable=reachable,
                rtt_s=rtt if reachable else None,
            )
        )
    return records


def peer_id_of(address: str) -> str:
    """The PeerID a multiaddr ends with (``/ip4/.../tcp/N/p2p/<PeerID>``)."""
    return address.rstrip("/").rsplit("/p2p/", 1)[-1]


def sees_swarm(snapshot: SwarmSnapshot) -> bool:
    """Whether a read reached the swarm at all: a bootstrap peer answered, or a server announced
    online answered its ping. Without either, "no servers" is what a cut-off client sees too."""
    return any(b.reachable for b in snapshot.bootstraps) or any(
        s.state == "online" for s in snapshot.servers
    )


async def _ping_bootstraps_and_count_peers(
    peer_ids: Sequence[str], timeout_s: float, dht: Any, node: Any
) -> tuple[dict[str, float], int]:
    # Runs inside the DHT's process (hence module level and picklable). A DHT ping is what a
    # bootstrap peer answers: it runs no petals server, so petals' rpc_ping would not fit.
    import asyncio

    from hivemind.p2p import PeerID

    async def ping(peer: str) -> float:
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(
                node.protocol.call_ping(PeerID.from_base58(peer), validate=False, strict=False),
                timeout_s,
            )
        except Exception:  # timeouts, refused dials, a bad PeerID: all mean "did not answer"
            return math.inf
        return time.monotonic() - started if answer is not None else math.inf

    rtts = await asyncio.gather(*(ping(peer) for peer in peer_ids))
    peers = await node.p2p.list_peers()
    return dict(zip(peer_ids, rtts, strict=True)), len(peers)


def ping_bootstraps(
    dht: DHT, initial_peers: Sequence[str], timeout_s: float
) -> tuple[dict[str, float], int]:
    """DHT-ping each bootstrap peer; returns round trips per PeerID (``math.inf``: no answer) and
    how many peers the DHT client's p2p is connected to."""
    peer_ids = [peer_id_of(address) for address in initial_peers]
    future = dht.run_coroutine(
        functools.partial(_ping_bootstraps_and_count_peers, peer_ids, timeout_s),
        return_future=True,
    )
    result: tuple[dict[str, float], int] = future.result(timeout=timeout_s + 10)
    return result


def ping_servers(dht: DHT, peer_ids: Sequence[str], timeout_s: float) -> dict[str, float]:
    """Round trip per PeerID through the DHT's p2p (``math.inf``: no answer within timeout_s)."""
    if not peer_ids:
        return {}
    from swarm import compat

    compat.apply()  # petals 2.2 imports on hivemind 1.1.12 only after this (idempotent)
    from hivemind.p2p import PeerID
    from petals.utils.ping import ping_parallel

    # Runs inside the DHT's process, so the coroutine must be a picklable module-level function.
    # petals' ping counts "protocol not supported" (a server whose DHT is in client mode,
    # reachable through a relay) as an answer: the peer is there.
    future = dht.run_coroutine(
        functools.partial(
            ping_parallel, [PeerID.from_base58(p) for p in peer_ids], wait_timeout=timeout_s
        ),
        return_future=True,
    )
    results = future.result(timeout=timeout_s + 10)
    return {peer.to_base58(): float(rtt) for peer, rtt in results.items()}


OpenDht = Callable[..., contextlib.AbstractContextManager[Any]]


class DhtCollector:
    """``fetch`` for the ``Refresher``: reads the DHT through one long-lived client DHT.

    Thread-safe; ``close()`` (or ``stop()``) shuts the DHT down (its process and p2pd). Reads
    after ``close()`` raise ``SwarmUnavailable``.
    """

    def __init__(
        self,
        swarm: SwarmSettings,
        *,
        num_blocks: int,
        replication_target: int,
        reachability_timeout_s: float = 5.0,
        startup_timeout_s: float = 30.0,
        read_timeout_s: float | None = None,
        open_dht: OpenDht | None = None,
    ) -> None:
        from swarm.dht import READ_TIMEOUT_S
        from swarm.dht import open_dht as default_open_dht

        self._initial_peers = swarm.require_initial_peers()
        self._trusted = tuple(swarm.trusted_servers)
        self._model = swarm.model
        self._dht_prefix = swarm.effective_dht_prefix
        self._num_blocks = num_blocks
        self._replication_target = replication_target
        self._reachability_timeout_s = reachability_timeout_s
        self._startup_timeout_s = startup_timeout_s
        # A read with no answer by then fails, and the next read joins the swarm afresh.
        self._read_timeout_s = READ_TIMEOUT_S if read_timeout_s is None else read_timeout_s
        self._open_dht = open_dht or default_open_dht
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._dht: Any = None
        self._closed = False
        self.connects = 0  # DHT joins so far: 1 in a healthy service's whole life

    def __call__(self) -> SwarmSnapshot:
        from swarm.dht import read_announcements

        with self._lock:
            started = time.monotonic()
            dht = self._connected()
            try:
                records = read_announcements(
                    dht, self._dht_prefix, self._num_blocks, timeout=self._read_timeout_s
                )
                online = [r.peer_id for r in records if r.state == "online"]
                rtts = ping_servers(dht, online, self._reachability_timeout_s)
                boot_rtts, peers = ping_bootstraps(
                    dht, self._initial_peers, self._reachability_timeout_s
                )
                snapshot = build_snapshot(
                    records,
                    rtts,
                    model=self._model,
                    dht_prefix=self._dht_prefix,
                    num_blocks=self._num_blocks,
                    replication_target=self._replication_target,
                    trusted_peer_ids=self._trusted,
                    taken_at=time.time(),
                    refresh_seconds=time.monotonic() - started,
                    bootstraps=bootstrap_records(self._initial_peers, boot_rtts),
                    dht_peers=peers,
                )
                if not sees_swarm(snapshot):
                    raise SwarmNotSeen(
                        f"the DHT client reached no bootstrap peer ({len(self._initial_peers)} "
                        f"configured) and no online server ({peers} p2p peers connected); "
                        "joining again on the next read",
                        snapshot.bootstraps,
                    )
            except BaseException:
                # A broken or cut-off DHT (dead process, lost p2pd, every peer gone) would fail
                # or read empty forever: the next read joins the swarm afresh.
                self._disconnect()
                raise
            return snapshot

    def _connected(self) -> Any:
        if self._closed:
            raise SwarmUnavailable("the collector is closed")
        if self._dht is not None and not self._dht.is_alive():
            log.warning("the DHT client process died; joining the swarm again")
            self._disconnect()
        if self._dht is None:
            stack = contextlib.ExitStack()
            try:
                dht = stack.enter_context(
                    self._open_dht(self._initial_peers, startup_timeout=self._startup_timeout_s)
                )
            except SwarmUnavailable as exc:
                # hivemind gives up joining when no bootstrap peer answers: for their history,
                # none did.
                raise SwarmNotSeen(str(exc), bootstrap_records(self._initial_peers, {})) from exc
            self._dht = dht
            self._stack = stack
            self.connects += 1
            log.info("joined the private swarm through %s", ", ".join(self._initial_peers))
        return self._dht

    def _disconnect(self) -> None:
        from swarm.process import kill_leftovers, tree_of

        stack, dht, self._stack, self._dht = self._stack, self._dht, None, None
        # Taken before the shutdown: once the DHT process is gone its p2pd is re-parented.
        pid = getattr(dht, "pid", None)
        tree = tree_of(pid) if isinstance(pid, int) else {}
        if stack is not None:
            try:
                stack.close()
            except Exception:
                log.warning("shutting down the DHT client failed", exc_info=True)
        # A wedged or stopped DHT process ignores the shutdown and SIGTERM: it and its p2pd
        # would outlive it, one more pair on every rejoin.
        if killed := kill_leftovers(tree):
            log.warning("the DHT client did not shut down; killed its processes %s", killed)
        if dht is not None and hasattr(dht, "join"):
            dht.join(timeout=10)  # reap it

    @property
    def dht_pid(self) -> int | None:
        """The DHT client's process ID while joined (it runs p2pd as its child), else None."""
        pid = getattr(self._dht, "pid", None)
        return pid if isinstance(pid, int) else None

    def close(self) -> None:
        """Shut the DHT client down; waits for a read in progress."""
        with self._lock:
            self._closed = True
            self._disconnect()

    # As a worker of the app (monitoring.app.Worker): the DHT is joined lazily by the first
    # read, and closed when the service stops.
    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.close()
