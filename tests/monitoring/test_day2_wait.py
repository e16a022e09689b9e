"""The day-2 coverage wait (petals_day2 wait_coverage, run by rolling_restart.yml and upgrade.yml
after each restart) against a real health service, from controllers in other time zones.

The wait accepts only a snapshot the service took after the wait began. It once took "now" from
the controller as ``now(utc=true).timestamp()``: a naive UTC time read as local time. West of UTC
that "now" lay hours ahead, so no snapshot was ever new enough and every wait ran to its timeout;
east of UTC it lay hours behind, so a snapshot from before the restart passed at once.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from monitoring.app import create_app
from monitoring.metrics import HealthMetrics
from monitoring.refresher import Refresher
from monitoring.settings import HealthSettings
from monitoring.snapshot import SwarmSnapshot
from tests.monitoring.procs import serve_in_thread
from tests.monitoring.synthetic import server, snapshot
from tests.monitoring.test_day2_silence import run_role_tasks

pytestmark = pytest.mark.monitoring

# POSIX TZ strings (no tzdata needed): 5 hours west of UTC and 9 hours east.
WEST = "LAB+5"
EAST = "LAB-9"


def covered() -> SwarmSnapshot:
    """Every block of 8 served twice, read now."""
    return snapshot(server("a", 0, 8), server("b", 0, 8), num_blocks=8, replication_target=2)


@contextmanager
def health_service(fetch: Callable[[], SwarmSnapshot], port: int | None = None) -> Iterator[str]:
    settings = HealthSettings(refresh_interval_s=0.2, probe=False)
    refresher = Refresher(fetch, settings.refresh_interval_s)
    metrics = HealthMetrics("test-model", refresher.status)
    with serve_in_thread(create_app(settings, refresher, metrics), port) as url:
        yield url


def wait_coverage(tmp_path: Path, url: str, tz: str, timeout_s: int):
    return run_role_tasks(
        tmp_path,
        "wait_coverage",
        env={"TZ": tz},
        check=False,
        petals_day2_health_url=url,
        petals_day2_replication="2",
        petals_day2_coverage_timeout=str(timeout_s),
        petals_day2_coverage_delay="1",
    )


@pytest.mark.parametrize("tz", [WEST, EAST, "UTC"])
def test_a_fresh_full_coverage_ends_the_wait_in_any_time_zone(tmp_path: Path, tz: str):
    with health_service(covered) as url:  # a new snapshot every 0.2 s
        started = time.monotonic()
        result = wait_coverage(tmp_path, url, tz, timeout_s=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    print(f"TZ={tz}: the wait ended after {time.monotonic() - started:.1f} s")


@pytest.mark.parametrize("tz", [WEST, EAST, "UTC"])
def test_a_snapshot_from_before_the_wait_never_ends_it(tmp_path: Path, tz: str):
    # The service is stuck on one read from a minute ago that showed full coverage (say, before
    # the restart): the wait must not take it for the coverage after the restart.
    old = covered().model_copy(update={"taken_at": time.time() - 60})
    with health_service(lambda: old) as url:
        result = wait_coverage(tmp_path, url, tz, timeout_s=6)
    assert result.returncode != 0, result.stdout[-3000:]
    message = result.stdout[result.stdout.find("Not every block") :]
    assert message.startswith("Not every block has 2 trusted online server(s) after 6 s"), (
        result.stdout[-3000:]
    )
    # It says why: the service's last read was good but older than the wait.
    assert "its last read of the DHT showed min_replication 2 and was taken -" in message, message
    print(message[:600])


def test_the_wait_outlasts_a_health_service_that_is_still_starting(tmp_path: Path):
    # rolling_restart.yml restarts the health service too, then waits through it at once. Here the
    # wait's first request reaches a listener that drops it (a service going down), then nothing
    # listens for a moment, then the service answers.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(wait_coverage, tmp_path, url, "UTC", 120)
            listener.settimeout(120)
            connection, _ = listener.accept()  # the wait's first request...
            connection.close()  # ...dropped unanswered
            listener.close()
            assert not waiting.done(), waiting.result().stdout[-3000:]
            with health_service(covered, port=port):
                result = waiting.result(timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "FAILED - RETRYING: [localhost]: Note when the wait began" in result.stdout, (
        result.stdout[-3000:]
    )
