"""The health probe goes through the kit's client, so it gets what students get: on the real
replicated loopback swarm, the servers on the probe's route are SIGKILLed while it generates,
the client routes around them, and the probe reports a success (not a failure)."""

from __future__ import annotations

import threading

import pytest

from client import ClientSettings
from monitoring.metrics import HealthMetrics
from monitoring.probe import Probe
from monitoring.refresher import RefreshStatus
from swarm.localswarm import LocalSwarm
from tests.client.conftest import FAILOVER_SETTINGS, heal, poll, route_peers

pytestmark = pytest.mark.swarm

TOKENS = 160  # long enough to be crashed into mid-generation


def test_the_probe_routes_around_a_crashed_server(replicated_swarm: LocalSwarm) -> None:
    health = HealthMetrics("m", lambda: RefreshStatus(interval_s=1.0))
    probe = Probe(
        replicated_swarm.settings(),
        health,
        interval_s=3600,  # run_once() below is the only generation
        tokens=TOKENS,
        timeout_s=120,
        prompt="Hello",
        options=ClientSettings(**FAILOVER_SETTINGS),
    )
    outcome: list[bool] = []
    worker = threading.Thread(target=lambda: outcome.append(probe.run_once()), daemon=True)
    killed: list[str] = []
    try:
        worker.start()
        used = poll(
            lambda: probe._client is not None and route_peers(probe._client),
            120,
            "the probe's generation to open its route",
        )
        for handle in replicated_swarm.servers:
            if handle.identity.peer_id in used:  # type: ignore[operator]
                replicated_swarm.kill_server(handle)
                killed.append(handle.name)
        worker.join(timeout=180)
        assert outcome == [True], health.probe_status()
        client = probe._client
        assert client is not None
        recoveries = client.recovery_metrics.recoveries_total
    finally:
        probe.stop()
        heal(replicated_swarm)
    assert killed
    assert recoveries >= 1  # the kit's recovery, not a lucky generation that ended first
    status = health.probe_status()
    assert status.runs_total == 1 and status.failures_total == 0, status
    assert status.last_ttft_s is not None and status.last_tokens_per_s is not None
