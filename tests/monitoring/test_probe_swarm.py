"""The probe: failure reasons (table-driven), a swarm it cannot join, and real generations through
the session swarm's trusted servers, stopped promptly with its DHT client gone."""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.errors import GenerationFailed
from monitoring.metrics import HealthMetrics
from monitoring.probe import Probe, ProbeTimeout, classify_failure
from monitoring.refresher import RefreshStatus
from swarm.errors import ConfigError, SwarmUnavailable
from swarm.localswarm import LocalSwarm
from swarm.swarm_settings import SwarmSettings
from tests.monitoring.procs import wait_until

pytestmark = pytest.mark.monitoring

BOOTSTRAP = "/ip4/127.0.0.1/tcp/31337/p2p/QmPfhWpf652poz18fgi21AsTxSC9JvCkCikPyGWnTw4HQU"
TRUSTED = "QmZHC7FrXcWbPiZD4fg4yLpjW2pFJd1SGt4yfhSPuwhMNv"


class MissingBlocksError(RuntimeError):
    """Stands in for petals' error of the same name (matched by name)."""


class ControlFailure(RuntimeError):
    """Stands in for hivemind's p2pd dial failure (matched by name)."""


def failed_after(cause: BaseException) -> GenerationFailed:
    """The client's error after its recovery budget is spent, as raised (``from`` the cause)."""
    try:
        raise GenerationFailed("gave up after 3 recoveries") from cause
    except GenerationFailed as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        pytest.param(TimeoutError("rpc"), "timeout", id="TimeoutError"),
        pytest.param(ProbeTimeout("3 of 16 tokens"), "timeout", id="probe deadline"),
        pytest.param(SwarmUnavailable("cannot join"), "unavailable", id="cannot join"),
        pytest.param(MissingBlocksError("[4, 5]"), "unavailable", id="missing blocks"),
        pytest.param(ControlFailure("dial refused"), "unavailable", id="server gone"),
        pytest.param(
            failed_after(TimeoutError("step")), "timeout", id="client gave up: servers hung"
        ),
        pytest.param(
            failed_after(ConnectionError("reset")), "unavailable", id="client gave up: gone"
        ),
        pytest.param(GenerationFailed("no trusted server"), "unavailable", id="no route"),
        pytest.param(ValueError("bad tensor"), "error", id="anything else"),
    ],
)
def test_failure_reasons(error: BaseException, reason: str):
    assert classify_failure(error) == reason


def metrics() -> HealthMetrics:
    return HealthMetrics("m", lambda: RefreshStatus(interval_s=1.0))


def test_the_probe_never_runs_without_trusted_servers():
    with pytest.raises(ConfigError, match="no trusted servers"):
        Probe(
            SwarmSettings.load(model="m", initial_peers=[BOOTSTRAP]),
            metrics(),
            interval_s=1,
            tokens=4,
            timeout_s=10,
            prompt="hi",
        )


def test_a_swarm_it_cannot_join_is_reported_unavailable_every_interval(tiny_model_dir: Path):
    attempts: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def cannot_join(settings: SwarmSettings, **kwargs: Any) -> Iterator[Any]:
        attempts.append(kwargs)
        raise SwarmUnavailable("cannot join the private swarm: no bootstrap peer answers")
        yield  # pragma: no cover

    health = metrics()
    settings = SwarmSettings.load(
        model=str(tiny_model_dir), initial_peers=[BOOTSTRAP], trusted_servers=[TRUSTED]
    )
    probe = Probe(
        settings,
        health,
        interval_s=0.2,
        tokens=4,
        timeout_s=10,
        prompt="hi",
        open_model=cannot_join,
    )
    probe.start()
    try:
        wait_until(lambda: len(attempts) >= 2, timeout=60, what="two probe attempts")
    finally:
        started = time.monotonic()
        probe.stop()
    assert time.monotonic() - started < 5
    assert not probe.running
    status = health.probe_status()
    assert status.failures_total >= 2 and status.last_failure_reason == "unavailable"
    assert "no bootstrap peer answers" in (status.last_failure_detail or "")
    # Petals would retry a missing block forever; the probe caps it.
    assert attempts[0]["max_retries"] >= 1


def test_real_generations_through_the_trusted_servers(local_swarm: LocalSwarm):
    health = metrics()
    probe = Probe(
        local_swarm.settings(), health, interval_s=0.2, tokens=5, timeout_s=60, prompt="Hello"
    )
    before = set(multiprocessing.active_children())
    probe.start()
    try:
        wait_until(
            lambda: health.probe_status().runs_total >= 3,
            timeout=120,
            interval=0.2,
            what="three probe generations",
        )
    finally:
        started = time.monotonic()
        probe.stop()
    stopped_in = time.monotonic() - started

    status = health.probe_status()
    assert status.failures_total == 0, status
    assert status.last_ttft_s is not None and 0 < status.last_ttft_s < 30
    assert status.last_tokens_per_s is not None and status.last_tokens_per_s > 0
    assert stopped_in < 15, f"probe.stop() took {stopped_in:.1f} s"
    leftovers = set(multiprocessing.active_children()) - before
    assert not leftovers, f"the probe's DHT client outlived stop(): {leftovers}"
