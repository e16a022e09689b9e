"""The refresher keeps the last good snapshot, counts failures and stops at once."""

from __future__ import annotations

import threading
import time

import pytest

from monitoring.refresher import Refresher
from tests.monitoring.procs import wait_until
from tests.monitoring.synthetic import MutableFetch, server, snapshot

pytestmark = pytest.mark.monitoring


def test_a_failed_read_keeps_the_previous_snapshot_and_is_counted():
    good = snapshot(server("a", 0, 8))
    fetch = MutableFetch(good)
    refresher = Refresher(fetch, interval_s=60)

    assert refresher.refresh_once()
    first = refresher.status()
    fetch.fail(TimeoutError("DHT lookup timed out"))
    assert not refresher.refresh_once()
    status = refresher.status()

    assert status.snapshot == good
    assert status.last_success_at == first.last_success_at
    assert first.last_success_at is not None and status.last_attempt_at is not None
    assert status.last_attempt_at >= first.last_success_at
    assert status.errors_total == 1
    assert status.last_error == "TimeoutError: DHT lookup timed out"
    assert not status.last_ok


def test_a_fetch_returning_something_else_is_an_error():
    refresher = Refresher(lambda: {"model": "m"}, interval_s=60)  # type: ignore[arg-type, return-value]

    assert not refresher.refresh_once()
    assert refresher.status().last_error == "TypeError: fetch returned dict, not a SwarmSnapshot"
    assert refresher.status().snapshot is None


def test_freshness_follows_the_interval():
    refresher = Refresher(MutableFetch(snapshot(server("a", 0, 8))), interval_s=10)
    assert not refresher.status().is_fresh(3)
    refresher.refresh_once()
    done = refresher.status().last_success_at
    assert done is not None

    assert refresher.status().is_fresh(3, now=done + 29)
    assert not refresher.status().is_fresh(3, now=done + 30)
    assert refresher.status().age_s(now=done + 12) == pytest.approx(12)


def test_background_thread_refreshes_every_interval():
    fetch = MutableFetch(snapshot(server("a", 0, 8)))
    refresher = Refresher(fetch, interval_s=0.05)
    refresher.start()
    try:
        wait_until(lambda: fetch.calls >= 3, timeout=5, what="three refreshes")
        newer = snapshot(server("a", 0, 4), server("b", 4, 8))
        fetch.set(newer)
        wait_until(lambda: refresher.status().snapshot == newer, timeout=5, what="the new snapshot")
    finally:
        refresher.stop()
    assert not refresher.running


def test_stop_wakes_the_thread_at_once():
    fetch = MutableFetch(snapshot(server("a", 0, 8)))
    refresher = Refresher(fetch, interval_s=3600)
    refresher.start()
    wait_until(lambda: fetch.calls == 1, timeout=5, what="the first refresh")

    started = time.monotonic()
    refresher.stop()

    assert time.monotonic() - started < 1
    assert not refresher.running
    assert fetch.calls == 1


def test_stop_waits_for_a_read_in_progress():
    release = threading.Event()
    entered = threading.Event()
    good = snapshot(server("a", 0, 8))

    def slow_fetch():
        entered.set()
        release.wait(5)
        return good

    refresher = Refresher(slow_fetch, interval_s=3600)
    refresher.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=refresher.stop)
    stopper.start()
    assert stopper.is_alive()
    release.set()
    stopper.join(5)

    assert not stopper.is_alive()
    assert refresher.status().snapshot == good


@pytest.mark.parametrize("interval", [0, -1])
def test_interval_must_be_positive(interval):
    with pytest.raises(ValueError, match="must be a positive number of seconds"):
        Refresher(MutableFetch(), interval_s=interval)
