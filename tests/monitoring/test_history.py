"""The per-server and per-bootstrap history ring (monitoring/history.py): bounds, order, ageing
out, failed reads, the memory cap, and how the refresher, /api/v1/state and the page show it."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from monitoring.history import History
from monitoring.metrics import ProbeStatus
from monitoring.refresher import Refresher, RefreshStatus, SwarmNotSeen
from monitoring.snapshot import BootstrapRecord, ServerRecord, SwarmSnapshot
from monitoring.state import refresh_state, swarm_state
from monitoring.web import render
from tests.monitoring.synthetic import MutableFetch, peer, server, snapshot

pytestmark = pytest.mark.unit

BOOT = BootstrapRecord(
    address=f"/ip4/10.0.0.1/tcp/31337/p2p/{peer('boot')}", peer_id=peer("boot"), reachable=True,
    rtt_s=0.002,
)  # fmt: skip
BOOT_DOWN = BOOT.model_copy(update={"reachable": False, "rtt_s": None})


def read(*servers: ServerRecord, at: float, boots: tuple[BootstrapRecord, ...] = (BOOT,)):
    return snapshot(*servers).model_copy(update={"taken_at": at, "bootstraps": boots})


def marks(history: History, name: str) -> list[tuple[float, str]]:
    track = next(t for t in history.servers if t.peer_id == peer(name))
    return [(m.at, m.state) for m in track.marks]


def test_marks_are_kept_oldest_first_and_bounded_to_the_last_points():
    history = History(points=3)
    states = ["joining", "online", "online", "unreachable", "online"]
    for at, state in enumerate(states, start=100):
        history = history.after_read(read(server("a", 0, 8, state=state), at=float(at)))

    assert marks(history, "a") == [(102.0, "online"), (103.0, "unreachable"), (104.0, "online")]
    assert [m.state for m in history.bootstraps[0].marks] == ["reachable"] * 3
    assert history.bootstraps[0].marks[-1].rtt_s == 0.002


def test_a_departed_server_is_marked_absent_then_ages_out_after_points_reads():
    history = History(points=3)
    history = history.after_read(read(server("a", 0, 4), server("b", 4, 8), at=1.0))
    for at in (2.0, 3.0):
        history = history.after_read(read(server("a", 0, 4), at=at))
        # Still shown: its last online mark is within the window.
        assert marks(history, "b")[-1] == (at, "absent")
    assert marks(history, "b") == [(1.0, "online"), (2.0, "absent"), (3.0, "absent")]

    history = history.after_read(read(server("a", 0, 4), at=4.0))
    assert [t.peer_id for t in history.servers] == [peer("a")]

    # Back after it aged out: a fresh track, not the old marks.
    history = history.after_read(read(server("a", 0, 4), server("b", 4, 8), at=5.0))
    assert marks(history, "b") == [(5.0, "online")]


def test_a_failed_read_marks_servers_unknown_and_bootstraps_with_what_it_learnt():
    history = History(points=4).after_read(read(server("a", 0, 8, rtt_s=0.01), at=1.0))
    history = history.after_failed_read(2.0, [BOOT_DOWN])  # saw no bootstrap peer: unreachable
    history = history.after_failed_read(3.0)  # failed otherwise: nothing known

    assert marks(history, "a") == [(1.0, "online"), (2.0, "unknown"), (3.0, "unknown")]
    assert history.servers[0].marks[0].rtt_s == 0.01
    assert [(m.at, m.state) for m in history.bootstraps[0].marks] == [
        (1.0, "reachable"),
        (2.0, "unreachable"),
        (3.0, "unknown"),
    ]
    # Unknown marks do not keep a server: points reads without seeing it and it is gone.
    history = history.after_failed_read(4.0).after_failed_read(5.0)
    assert history.servers == ()
    assert len(history.bootstraps[0].marks) == 4


def test_names_and_trust_follow_the_latest_read_and_rows_are_trusted_first_by_name():
    renamed = server("a", 0, 4, public_name="gpu-a-renamed")
    history = History().after_read(
        read(server("a", 0, 4, public_name="gpu-a"), server("z", 0, 8, trusted=False), at=1.0)
    )
    history = history.after_read(
        read(renamed, server("b", 4, 8, public_name="gpu-b"), server("z", 0, 8, trusted=False),
             at=2.0)
    )  # fmt: skip
    assert [(t.public_name, t.trusted) for t in history.servers] == [
        ("gpu-a-renamed", True),
        ("gpu-b", True),
        ("z", False),
    ]


def test_memory_is_capped_keeping_trusted_then_most_recently_seen_servers():
    history = History(points=5, max_servers=3).after_read(
        read(server("ours", 0, 8), server("old-stranger", 0, 8, trusted=False), at=1.0)
    )
    flood = [server(f"stranger{i}", 0, 8, trusted=False) for i in range(4)]
    history = history.after_read(read(server("ours", 0, 8), *flood, at=2.0))

    assert len(history.servers) == 3
    kept = {t.peer_id for t in history.servers}
    assert peer("ours") in kept
    assert peer("old-stranger") not in kept, "the one seen longest ago goes first"


def test_history_rejects_an_empty_ring():
    with pytest.raises(ValueError, match="at least 1"):
        History(points=0)


def test_the_refresher_moves_the_history_on_good_and_failed_reads():
    fetch = MutableFetch(read(server("a", 0, 8), at=1.0))
    refresher = Refresher(fetch, 60.0, history_points=3)
    assert refresher.refresh_once()
    fetch.fail(SwarmNotSeen("no bootstrap peer and no online server", [BOOT_DOWN]))
    assert not refresher.refresh_once()
    fetch.fail(RuntimeError("the DHT process died"))
    assert not refresher.refresh_once()

    history = refresher.status().history
    assert history.points == 3
    assert [m.state for m in history.servers[0].marks] == ["online", "unknown", "unknown"]
    assert [m.state for m in history.bootstraps[0].marks] == ["reachable", "unreachable", "unknown"]
    assert refresher.status().snapshot is not None, "the last good snapshot stays"


def state_with_history(history: History, snap: SwarmSnapshot):
    refresh = refresh_state(RefreshStatus(interval_s=15.0), 3.0, 0.0)
    return swarm_state(snap, refresh, ProbeStatus(), history)


class Strips(HTMLParser):
    """Rows of the history strips: data-key -> the strip's label and its squares' classes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, object]] = {}
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "history-row" in (a.get("class") or ""):
            self._key = a["data-key"] or ""
            self.rows[self._key] = {"now": a["data-now"], "squares": [], "titles": []}
        elif tag == "ol" and self._key is not None:
            self.rows[self._key]["label"] = a.get("aria-label")
        elif tag == "li" and self._key is not None:
            self.rows[self._key]["squares"].append(a.get("class"))  # type: ignore[union-attr]
            self.rows[self._key]["titles"].append(a.get("title"))  # type: ignore[union-attr]

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._key = None


def test_state_and_page_show_each_server_and_bootstrap_strip_in_words():
    history = History(points=4)
    history = history.after_read(read(server("gpu-a", 0, 8, rtt_s=0.004), at=0.0))
    last = read(server("gpu-a", 0, 8, state="unreachable"), at=60.0, boots=(BOOT_DOWN,))
    history = history.after_read(last)
    state = state_with_history(history, last)

    body = state.model_dump(mode="json")["history"]
    assert body["points"] == 4
    assert body["servers"] == [
        {
            "peer_id": peer("gpu-a"),
            "public_name": "gpu-a",
            "trusted": True,
            "marks": [
                {"at": 0.0, "state": "online", "rtt_s": 0.004},
                {"at": 60.0, "state": "unreachable", "rtt_s": None},
            ],
        }
    ]
    assert [m["state"] for m in body["bootstraps"][0]["marks"]] == ["reachable", "unreachable"]
    assert body["bootstraps"][0]["address"] == BOOT.address

    page = Strips()
    page.feed(render.status_fragment(state))
    row = page.rows[peer("gpu-a")]
    assert row["squares"] == ["mark online", "mark unreachable"]
    assert row["now"] == "unreachable"
    assert row["titles"] == ["00:00:00 UTC: online, 4 ms", "00:01:00 UTC: unreachable"]
    label = str(row["label"])
    assert label.startswith("gpu-a (") and "1 online, 1 unreachable; now unreachable" in label
    boot = page.rows[peer("boot")]
    assert boot["squares"] == ["mark reachable", "mark unreachable"]
    assert boot["now"] == "unreachable"
