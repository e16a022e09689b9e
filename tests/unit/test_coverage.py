"""Folding DHT announcements into servers and per-block coverage."""

from __future__ import annotations

import concurrent.futures

import pytest

from swarm.coverage import ServerAnnouncement, merge_announcements, render_status, servers_per_block
from swarm.dht import _ranges, block_uids

pytestmark = pytest.mark.unit


def info(state="online", start=None, end=None, **extra):
    return {"state": state, "start_block": start, "end_block": end, "throughput": 10.0, **extra}


def test_merge_uses_announced_span_and_falls_back_to_seen_blocks():
    per_block = [
        {"A": info(start=0, end=2), "C": info()},
        {"A": info(start=0, end=2), "C": info()},
        {"B": info(start=2, end=4, state="joining")},
        {"B": info(start=2, end=4, state="joining")},
    ]
    records = merge_announcements(per_block)
    spans = {r.peer_id: (r.start_block, r.end_block, r.state) for r in records}
    assert spans == {"A": (0, 2, "online"), "C": (0, 2, "online"), "B": (2, 4, "joining")}


def rec(peer, start, end, state="online"):
    return ServerAnnouncement(peer_id=peer, state=state, start_block=start, end_block=end)


@pytest.mark.parametrize(
    "records, trusted, expected",
    [
        ([rec("A", 0, 4), rec("B", 4, 8)], None, [1] * 8),
        ([rec("A", 0, 4), rec("B", 2, 8)], None, [1, 1, 2, 2, 1, 1, 1, 1]),
        ([rec("A", 0, 4), rec("B", 4, 8, "joining")], None, [1] * 4 + [0] * 4),
        ([rec("A", 0, 4), rec("R", 0, 8)], ["A"], [1] * 4 + [0] * 4),  # untrusted never counts
        ([rec("A", 0, 9)], None, [1] * 8),  # clipped to the model
    ],
)
def test_servers_per_block(records, trusted, expected):
    counts = [len(s) for s in servers_per_block(records, 8, trusted=trusted)]
    assert counts == expected


def test_render_status_marks_uncovered_runs_and_untrusted():
    table = render_status(
        [rec("QmTrustedServer000000000001", 0, 4), rec("QmRogueServer0000000000002", 4, 8)],
        8,
        dht_prefix="tiny",
        trusted=["QmTrustedServer000000000001"],
    )
    assert "blocks 0-3: 1 online server(s)" in table
    assert "blocks 4-7: UNCOVERED" in table
    assert "coverage: 4/8 blocks served" in table
    rogue_line = next(line for line in table.splitlines() if "4:8" in line)
    assert rogue_line.rstrip().endswith("NO")


def test_block_uids_and_ranges():
    assert block_uids("tiny", range(3)) == ["tiny.0", "tiny.1", "tiny.2"]
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


class SilentDht:
    """A DHT whose process takes every request and never answers (wedged or SIGSTOPped)."""

    def __init__(self) -> None:
        self.requests = 0

    def run_coroutine(self, coro, return_future=False):
        assert return_future, "a read that waits without a timeout would hang here forever"
        self.requests += 1
        return concurrent.futures.Future()


def test_a_read_the_dht_never_answers_fails_after_its_timeout():
    from swarm.dht import latest_records, read_announcements
    from swarm.errors import SwarmUnavailable

    with pytest.raises(SwarmUnavailable, match="no answer to a read of the block announcements"):
        read_announcements(SilentDht(), "tiny", 4, timeout=0.05)
    with pytest.raises(SwarmUnavailable, match="no answer to a read of the latest block records"):
        latest_records(SilentDht(), ["tiny.0"], timeout=0.05)


def test_wait_for_blocks_ends_at_its_deadline_when_the_dht_never_answers():
    from swarm.dht import wait_for_blocks
    from swarm.errors import SwarmUnavailable

    dht = SilentDht()
    # A read may use what is left of the wait, no more: the wait still ends, and says why.
    with pytest.raises(SwarmUnavailable, match=r"blocks 0-3 .* \(the last read failed: the DHT"):
        wait_for_blocks(dht, "tiny", 4, timeout=1.0, poll_s=0.01)
    assert dht.requests >= 1
