"""The DHT collector: records to snapshots (table-driven), then against a real loopback swarm —
every announced field arrives, a frozen server is "unreachable" (pinged inside the swarm), and a
dead DHT client is replaced on the next read."""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from monitoring.collector import (
    DhtCollector,
    bootstrap_records,
    build_snapshot,
    peer_id_of,
    sees_swarm,
)
from monitoring.snapshot import SwarmSnapshot, replication
from swarm.coverage import ServerAnnouncement
from swarm.errors import SwarmUnavailable
from swarm.localswarm import LocalSwarm, ServerHandle
from tests.monitoring.procs import wait_until

pytestmark = pytest.mark.monitoring

A, B, C = "12D3KooWAAAA", "12D3KooWBBBB", "12D3KooWCCCC"


def announcement(peer_id: str, start: int, end: int, state: str = "online", **fields: Any):
    values: dict[str, Any] = {
        "throughput": 10.0, "public_name": peer_id[-4:].lower(), "version": "2.2.0.post1",
        "torch_dtype": "bfloat16", "quant_type": "nf4", "using_relay": False,
        "cache_tokens_left": 4096, "inference_rps": 300.0, "forward_rps": 2000.0,
        "network_rps": 900.0,
    }  # fmt: skip
    values.update(fields)
    return ServerAnnouncement(
        peer_id=peer_id, state=state, start_block=start, end_block=end, **values
    )


def snapshot_of(records: list[ServerAnnouncement], rtts: dict[str, float]) -> SwarmSnapshot:
    return build_snapshot(
        records,
        rtts,
        model="m",
        dht_prefix="m",
        num_blocks=8,
        replication_target=2,
        trusted_peer_ids=(A, B),
        taken_at=1.0,
        refresh_seconds=0.1,
    )


# (case, announced state, ping round trip or None when not pinged, expected state)
STATE_CASES = [
    ("online and answering", "online", 0.002, "online"),
    ("online, no answer", "online", math.inf, "unreachable"),
    ("online, not pinged", "online", None, "online"),
    ("joining is never unreachable", "joining", math.inf, "joining"),
    ("offline stays offline", "offline", math.inf, "offline"),
    ("unknown state reads as joining", "hibernating", None, "joining"),
]


@pytest.mark.parametrize(
    ("announced", "rtt", "expected"),
    [pytest.param(a, r, e, id=case) for case, a, r, e in STATE_CASES],
)
def test_state_comes_from_the_announcement_and_the_ping(announced, rtt, expected):
    rtts = {} if rtt is None else {A: rtt}
    snap = snapshot_of([announcement(A, 0, 8, announced)], rtts)
    assert [s.state for s in snap.servers] == [expected]


def test_records_become_server_rows_with_trust_and_every_field():
    snap = snapshot_of(
        [
            announcement(A, 0, 4, using_relay=True, quant_type="int8"),
            announcement(B, 4, 8, throughput=-1.0, cache_tokens_left=-5, network_rps=math.nan),
            announcement(C, 0, 8),
        ],
        {A: 0.001, B: 0.001, C: 0.001},
    )
    rows = {s.peer_id: s for s in snap.servers}
    assert {p: r.trusted for p, r in rows.items()} == {A: True, B: True, C: False}
    a = rows[A]
    assert (a.start_block, a.end_block, a.public_name, a.version) == (0, 4, "aaaa", "2.2.0.post1")
    assert (a.torch_dtype, a.quant_type, a.using_relay) == ("bfloat16", "int8", True)
    assert (a.throughput, a.inference_rps, a.forward_rps, a.network_rps) == (10, 300, 2000, 900)
    assert a.cache_tokens_left == 4096
    # A peer announces whatever it likes: impossible numbers become unknown, not an error.
    b = rows[B]
    assert (b.throughput, b.cache_tokens_left, b.network_rps) == (None, None, None)
    # The untrusted peer never counts toward coverage.
    assert replication(snap) == [1] * 8
    assert (snap.replication_target, snap.trusted_peer_ids) == (2, (A, B))


def test_an_impossible_block_span_is_dropped_not_fatal():
    snap = snapshot_of([announcement(A, 0, 8), announcement(C, 5, 5), announcement(B, -2, 3)], {})
    assert [s.peer_id for s in snap.servers] == [A]


BOOT = "/ip4/10.0.0.1/tcp/31337/p2p/QmBootstrapPeer"


def test_bootstrap_records_follow_the_dht_ping():
    assert peer_id_of(BOOT) == "QmBootstrapPeer"
    answered, silent, unknown = bootstrap_records(
        [BOOT, "/ip4/10.0.0.2/tcp/31337/p2p/QmTwo", "/dns/x/tcp/1/p2p/QmThree"],
        {"QmBootstrapPeer": 0.003, "QmTwo": math.inf},
    )
    assert (answered.reachable, answered.rtt_s) == (True, 0.003)
    assert (silent.reachable, silent.rtt_s) == (False, None)
    assert (unknown.reachable, unknown.peer_id) == (False, "QmThree")


# (case, bootstrap answered, servers' announced state and ping, sees the swarm)
SEES_CASES = [
    ("bootstrap answers, no servers", True, [], True),
    ("cut off: nothing answers, nothing read", False, [], False),
    ("bootstrap gone, a server answers", False, [("online", 0.002)], True),
    ("bootstrap gone, only stale ONLINE records", False, [("online", math.inf)], False),
    ("bootstrap gone, only joining servers", False, [("joining", None)], False),
]


@pytest.mark.parametrize(
    ("boot_ok", "servers", "expected"),
    [pytest.param(b, s, e, id=case) for case, b, s, e in SEES_CASES],
)
def test_a_read_sees_the_swarm_only_if_something_answered(boot_ok, servers, expected):
    peers = [A, B, C]
    records = [announcement(peers[i], 0, 8, state) for i, (state, _) in enumerate(servers)]
    rtts = {peers[i]: rtt for i, (_, rtt) in enumerate(servers) if rtt is not None}
    snap = build_snapshot(
        records, rtts, model="m", dht_prefix="m", num_blocks=8, replication_target=1,
        trusted_peer_ids=peers, taken_at=1.0, refresh_seconds=0.1,
        bootstraps=bootstrap_records([BOOT], {"QmBootstrapPeer": 0.001 if boot_ok else math.inf}),
    )  # fmt: skip
    assert sees_swarm(snap) is expected


# -- against a real swarm --------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm(swarm_factory) -> LocalSwarm:
    # Long announcement period: a frozen server's records must outlive the test's wait for
    # "unreachable" (petals keeps them for twice the period).
    return swarm_factory(num_servers=2, dht_prefix="collector", update_period=30.0)


class RecordingOpen:
    """Wraps swarm.dht.open_dht and keeps every DHT it opened."""

    def __init__(self) -> None:
        from swarm.dht import open_dht

        self._open = open_dht
        self.opened: list[Any] = []

    @contextlib.contextmanager
    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with self._open(*args, **kwargs) as dht:
            self.opened.append(dht)
            yield dht


@pytest.fixture
def collector(swarm: LocalSwarm) -> Iterator[tuple[DhtCollector, RecordingOpen]]:
    opener = RecordingOpen()
    collector = DhtCollector(
        swarm.settings(),
        num_blocks=swarm.num_blocks,
        replication_target=1,
        reachability_timeout_s=1.0,
        open_dht=opener,
    )
    try:
        yield collector, opener
    finally:
        collector.close()
        assert all(not dht.is_alive() for dht in opener.opened), "a DHT client outlived close()"


def by_name(snap: SwarmSnapshot) -> dict[str | None, Any]:
    return {s.public_name: s for s in snap.servers}


def test_collector_reads_every_announced_field_through_one_dht(swarm, collector):
    import petals

    reader, opener = collector
    snaps = [reader() for _ in range(3)]

    assert len(opener.opened) == 1, "one long-lived DHT client, not one per read"
    snap = snaps[-1]
    assert snap.dht_prefix == "collector" and snap.num_blocks == 8
    assert set(snap.trusted_peer_ids) == set(swarm.trusted_peer_ids)
    servers = by_name(snap)
    assert set(servers) == {"server1", "server2"}
    for name, blocks in (("server1", (0, 4)), ("server2", (4, 8))):
        row = servers[name]
        assert row.state == "online" and row.trusted
        assert (row.start_block, row.end_block) == blocks
        assert row.version == petals.__version__
        assert (row.torch_dtype, row.quant_type, row.using_relay) == ("float32", "none", False)
        assert row.throughput == 10.0
        assert row.cache_tokens_left is not None and row.cache_tokens_left > 0
    assert replication(snap) == [1] * 8


def _signal_tree(handle: ServerHandle, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(handle.process.pid, sig)  # the server leads its own process group


def test_a_frozen_server_is_unreachable_until_it_answers_again(swarm, collector):
    reader, _ = collector
    frozen = next(s for s in swarm.servers if s.blocks.start == 4)
    assert by_name(reader())[frozen.name].state == "online"

    def unreachable() -> SwarmSnapshot | None:
        snap = reader()
        return snap if by_name(snap)[frozen.name].state == "unreachable" else None

    _signal_tree(frozen, signal.SIGSTOP)  # its DHT record still says ONLINE; its p2pd is silent
    try:
        seen = wait_until(
            unreachable,
            timeout=60,
            interval=0.5,
            what=f"{frozen.name} to be reported unreachable",
        )
        assert by_name(seen)["server1"].state == "online"
        assert replication(seen) == [1, 1, 1, 1, 0, 0, 0, 0]
    finally:
        _signal_tree(frozen, signal.SIGCONT)
    wait_until(
        lambda: by_name(reader())[frozen.name].state == "online",
        timeout=60,
        interval=0.5,
        what=f"{frozen.name} to answer pings again",
    )


def test_a_dead_dht_client_is_replaced_on_the_next_read(collector):
    reader, opener = collector
    reader()
    opener.opened[0].shutdown()  # as if the DHT process had died

    snap = reader()

    assert len(opener.opened) == 2
    assert {s.state for s in snap.servers} == {"online"}
    reader.close()
    with pytest.raises(SwarmUnavailable):
        reader()
