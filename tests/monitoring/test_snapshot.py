"""Coverage decisions from snapshots: only trusted online servers count."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from monitoring import snapshot as swarm
from tests.monitoring.synthetic import peer, server, snapshot

pytestmark = pytest.mark.unit

# (case, servers, expected trusted online servers per block of an 8-block model)
REPLICATION_CASES = [
    ("empty swarm", [], [0] * 8),
    ("one server covers all", [server("a", 0, 8)], [1] * 8),
    ("two halves", [server("a", 0, 4), server("b", 4, 8)], [1] * 8),
    ("gap in the middle", [server("a", 0, 3), server("b", 5, 8)], [1, 1, 1, 0, 0, 1, 1, 1]),
    ("overlap", [server("a", 0, 5), server("b", 3, 8)], [1, 1, 1, 2, 2, 1, 1, 1]),
    ("untrusted never counts", [server("x", 0, 8, trusted=False)], [0] * 8),
    (
        "untrusted beside trusted",
        [server("a", 0, 4), server("x", 0, 8, trusted=False)],
        [1, 1, 1, 1, 0, 0, 0, 0],
    ),
    ("joining is not covered", [server("a", 0, 8, state="joining")], [0] * 8),
    ("offline is not covered", [server("a", 0, 8, state="offline")], [0] * 8),
    ("unreachable is not covered", [server("a", 0, 8, state="unreachable")], [0] * 8),
    (
        "mixed states",
        [server("a", 0, 8), server("b", 0, 8, state="joining"), server("c", 2, 6)],
        [1, 1, 2, 2, 2, 2, 1, 1],
    ),
    ("blocks past the model are ignored", [server("a", 6, 12)], [0, 0, 0, 0, 0, 0, 1, 1]),
]


@pytest.mark.parametrize(
    ("servers", "expected"),
    [pytest.param(servers, expected, id=case) for case, servers, expected in REPLICATION_CASES],
)
def test_replication_ratio_and_minimum(servers, expected):
    snap = snapshot(*servers, num_blocks=8)

    assert swarm.replication(snap) == expected
    assert [len(s) for s in swarm.block_servers(snap)] == expected
    assert swarm.uncovered_blocks(snap) == [b for b, n in enumerate(expected) if n == 0]
    assert swarm.coverage_ratio(snap) == sum(1 for n in expected if n) / 8
    assert swarm.min_replication(snap) == min(expected)


def test_block_servers_lists_only_trusted_online_servers():
    a, b, x = (
        server("a", 0, 4),
        server("b", 2, 8, state="joining"),
        server("x", 0, 8, trusted=False),
    )
    blocks = swarm.block_servers(snapshot(a, b, x))

    assert blocks[0] == [a]
    assert blocks[3] == [a]
    assert blocks[5] == []


def test_block_announcers_lists_everyone_for_display():
    a, b, x = (
        server("a", 0, 4),
        server("b", 2, 8, state="joining"),
        server("x", 0, 8, trusted=False),
    )

    assert swarm.block_announcers(snapshot(a, b, x))[3] == [a, b, x]


@pytest.mark.parametrize(
    ("servers", "trusted", "by_state", "trusted_states", "not_online"),
    [
        pytest.param(
            [server("a", 0, 8)],
            ("a",),
            {"joining": 0, "online": 1, "offline": 0, "unreachable": 0},
            {"joining": 0, "online": 1, "offline": 0, "unreachable": 0},
            {},
            id="all online",
        ),
        pytest.param(
            [server("a", 0, 8), server("b", 0, 8, state="joining")],
            ("a", "b", "gone"),
            {"joining": 1, "online": 1, "offline": 0, "unreachable": 0},
            {"joining": 1, "online": 1, "offline": 1, "unreachable": 0},
            {"b": "joining", "gone": None},
            id="joining and absent",
        ),
        pytest.param(
            [server("a", 0, 8, state="unreachable"), server("x", 0, 8, trusted=False)],
            ("a",),
            {"joining": 0, "online": 0, "offline": 0, "unreachable": 1},
            {"joining": 0, "online": 0, "offline": 0, "unreachable": 1},
            {"a": "unreachable"},
            id="untrusted is not counted as trusted",
        ),
    ],
)
def test_states_of_trusted_servers(servers, trusted, by_state, trusted_states, not_online):
    snap = snapshot(*servers, trusted=tuple(peer(n) for n in trusted))

    assert swarm.servers_by_state(snap) == by_state
    assert swarm.trusted_states(snap) == trusted_states
    assert swarm.trusted_not_online(snap) == {peer(n): s for n, s in not_online.items()}
    assert swarm.trusted_online_peers(snap) == {peer(n) for n in trusted} - {
        peer(n) for n in not_online
    }


def test_untrusted_servers_are_named_whatever_their_state():
    x = server("x", 0, 8, trusted=False)
    y = server("y", 2, 3, trusted=False, state="offline")
    snap = snapshot(server("a", 0, 8), x, y)

    assert swarm.untrusted_servers(snap) == [x, y]
    assert swarm.servers_by_state(snap, trusted=False)["offline"] == 1


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [(4, 4, "end_block=4 must be greater than start_block=4"), (5, 2, "end_block=2")],
)
def test_server_record_refuses_empty_or_reversed_ranges(start, end, message):
    with pytest.raises(ValidationError, match=message):
        server("a", start, end)


def test_snapshot_refuses_a_peer_twice():
    with pytest.raises(ValidationError, match="each PeerID must appear once"):
        snapshot(server("a", 0, 4), server("a", 4, 8))
