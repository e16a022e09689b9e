"""The health service through real outages of a loopback swarm, as Prometheus sees it.

One health service (real DHT collector, real uvicorn) and one real Prometheus with the committed
rules watch a swarm of a bootstrap peer and two servers, and the service is never restarted:
- a SIGKILLed server (no OFFLINE announcement; its DHT record still says ONLINE) leaves its blocks
  with zero servers and PetalsBlockUncovered's expression true;
- with the service's own DHT client stopped (SIGSTOP: a wedged DHT whose reads never answer), a
  read fails after the read timeout, the wedged client and its p2pd are killed, and the service
  joins again and sees the swarm;
- with the bootstrap peer and every server killed, the service says it cannot see the swarm
  (petals_collector_up 0, no bootstrap up) instead of reporting every block uncovered;
- restarted with the same identities and ports, the swarm is seen again and fully covered.
Along the way /api/v1/state's history shows the killed server online, then unreachable, then online
again, and the bootstrap peer reachable, unreachable through the outage, then reachable again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from monitoring.app import create_app
from monitoring.collector import DhtCollector
from monitoring.metrics import HealthMetrics
from monitoring.refresher import Refresher
from monitoring.settings import HealthSettings
from swarm.dht import wait_for_listener
from swarm.launch import bootstrap_argv, server_argv, start_bootstrap, start_server
from swarm.localswarm import LocalSwarm, ServerHandle
from swarm.process import tree_of
from swarm.swarm_settings import SwarmSettings
from tests.monitoring.procs import serve_in_thread, wait_until
from tests.monitoring.test_prometheus_live import alert_exprs, prometheus

pytestmark = pytest.mark.monitoring

REFRESH_S = 2.0
# Generous poll limits: the issue asks for "within two refresh periods"; the test reports what it
# measured rather than failing on a slow shared machine.
POLL_S = 90
# The service's read timeout here: far above a read on a loaded machine (well under a second),
# short enough for the wedged-client test.
READ_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def swarm(swarm_factory) -> LocalSwarm:
    # A long announcement period keeps a killed server's ONLINE record in the DHT for the whole
    # test, as on a real swarm right after a crash.
    return swarm_factory(num_servers=2, dht_prefix="outage", update_period=60.0)


class Watch:
    def __init__(self, prometheus_url: str, collector: DhtCollector, service_url: str) -> None:
        self.prometheus_url = prometheus_url
        self.collector = collector
        self.service_url = service_url

    def history(self) -> dict[str, Any]:
        """The history part of the service's /api/v1/state (200 or 503 alike)."""
        history: dict[str, Any] = httpx.get(f"{self.service_url}/api/v1/state", timeout=5).json()[
            "history"
        ]
        return history

    def server_marks(self, peer_id: str) -> list[dict[str, Any]]:
        tracks = [t for t in self.history()["servers"] if t["peer_id"] == peer_id]
        return tracks[0]["marks"] if tracks else []

    def bootstrap_marks(self) -> list[str]:
        (bootstrap,) = self.history()["bootstraps"]
        return [m["state"] for m in bootstrap["marks"]]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=5
        )
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait(self, expr: str, expected: float, what: str) -> float:
        """Poll until ``expr`` has ``expected`` as its (single) value; seconds it took."""
        started = time.monotonic()
        seen: list[float | None] = [None]

        def reached() -> bool:
            seen[0] = self.value(expr)
            return seen[0] == expected

        wait_until(
            reached, timeout=POLL_S, interval=0.5, what=what, on_timeout=lambda: f"{expr}={seen}"
        )
        return time.monotonic() - started


@pytest.fixture(scope="module")
def watch(swarm: LocalSwarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    settings = HealthSettings(refresh_interval_s=REFRESH_S, probe=False)
    collector = DhtCollector(
        swarm.settings(), num_blocks=swarm.num_blocks, replication_target=1,
        reachability_timeout_s=1.0, startup_timeout_s=5.0, read_timeout_s=READ_TIMEOUT_S,
    )  # fmt: skip
    # Room for every read of the module's tests (~2 s apart), so no mark ages out mid-test.
    refresher = Refresher(collector, REFRESH_S, join_timeout_s=30, history_points=500)
    metrics = HealthMetrics(swarm.settings().model, refresher.status)
    app = create_app(settings, refresher, metrics, workers=[collector])
    tmp = tmp_path_factory.mktemp("outage-prometheus")
    with serve_in_thread(app) as url, prometheus(tmp, url) as prometheus_url:
        watch = Watch(prometheus_url, collector, url)
        watch.wait("min(petals_blocks_covered_ratio)", 1, "Prometheus to see every block served")
        yield watch


def restart_bootstrap(swarm: LocalSwarm) -> None:
    """Start the bootstrap peer again with the same identity and port (a reboot)."""
    assert swarm.bootstrap_identity is not None
    argv = bootstrap_argv(
        identity_path=swarm.bootstrap_identity.path,
        host_maddrs=[f"/ip4/{swarm.host}/tcp/{swarm.bootstrap_port}"],
    )
    swarm.bootstrap = start_bootstrap(
        "bootstrap", argv, log_path=swarm.workdir / "bootstrap-again.log"
    )
    wait_for_listener(swarm.host, swarm.bootstrap_port, timeout=60)


def restart_server(swarm: LocalSwarm, old: ServerHandle) -> ServerHandle:
    """Start a killed server again with the same identity, blocks and port."""
    settings = SwarmSettings.load(
        model=swarm.model,
        dht_prefix=swarm.dht_prefix,
        initial_peers=swarm.initial_peers,
        host_maddrs=[f"/ip4/{swarm.host}/tcp/{old.port}"],
        torch_dtype=swarm.torch_dtype,
    )
    argv = server_argv(
        settings,
        blocks=old.blocks,
        identity_path=old.identity.path,
        throughput=swarm.throughput,
        public_name=old.name,
        update_period=swarm.update_period,
    )
    process = start_server(
        old.name, argv, swarm.model, log_path=swarm.workdir / f"{old.name}-again.log"
    )
    handle = ServerHandle(old.name, old.identity, old.blocks, old.trusted, process, old.port)
    swarm.servers[swarm.servers.index(old)] = handle
    return handle


def runs(states: list[str]) -> list[str]:
    """Consecutive repeats collapsed: [a, a, b, a] -> [a, b, a]."""
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


def uncovered_blocks(watch: Watch) -> set[str]:
    return {r["metric"]["block"] for r in watch.query("max by (block) (petals_block_servers) == 0")}


def test_a_sigkilled_server_leaves_its_blocks_uncovered_and_the_alert_true(swarm, watch):
    victim = next(s for s in swarm.servers if s.blocks.start == 4)
    victim.process.kill()  # no OFFLINE announcement: the DHT still says ONLINE

    took = watch.wait(
        "count(max by (block) (petals_block_servers) == 0)", 4, "blocks 4-7 to show 0 servers"
    )
    print(f"SIGKILL: blocks without a server after {took:.1f} s")
    assert uncovered_blocks(watch) == {"4", "5", "6", "7"}
    assert watch.query(alert_exprs()["PetalsBlockUncovered"]), "the alert expression is true"
    assert watch.value("min(petals_collector_up)") == 1  # the swarm is seen: this is real

    # Its history: answered pings while it ran, then unreachable (still announced ONLINE).
    peer_id = victim.identity.peer_id
    marks = wait_until(
        lambda: (m := watch.server_marks(peer_id)) and m[-1]["state"] == "unreachable" and m,
        timeout=POLL_S,
        what="the killed server's history to end unreachable",
        on_timeout=lambda: str(watch.server_marks(peer_id)),
    )
    assert runs([m["state"] for m in marks]) == ["online", "unreachable"], marks
    assert all(m["rtt_s"] > 0 for m in marks if m["state"] == "online")
    assert all(m["rtt_s"] is None for m in marks if m["state"] == "unreachable")
    assert [m["at"] for m in marks] == sorted(m["at"] for m in marks), "oldest first"
    (track,) = [t for t in watch.history()["servers"] if t["peer_id"] == peer_id]
    assert track["public_name"] == victim.name

    restart_server(swarm, victim)
    watch.wait("min(petals_blocks_covered_ratio)", 1, "the restarted server to cover 4-7 again")
    assert not watch.query(alert_exprs()["PetalsBlockUncovered"])
    # Back online (a restarting server may announce itself joining on the way).
    states = runs([m["state"] for m in watch.server_marks(peer_id)])
    assert states[:2] == ["online", "unreachable"] and states[-1] == "online", states
    print(f"history of the killed server: {states}")


def test_a_wedged_dht_client_is_killed_and_replaced(swarm, watch):
    watch.wait("min(petals_collector_up)", 1, "the service to see the swarm")
    pid = watch.collector.dht_pid
    assert pid is not None
    tree = tree_of(pid)
    assert len(tree) >= 2, f"the DHT client {pid} runs no p2pd: {tree}"
    connects_before = watch.collector.connects
    errors_before = httpx.get(f"{watch.service_url}/api/v1/state", timeout=5).json()["refresh"][
        "errors_total"
    ]
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: watch.collector.connects > connects_before,
            timeout=POLL_S,
            what="the service to join the swarm again with a new DHT client",
        )
    finally:
        for leftover in tree:  # lets a failed test's leftovers end on their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGCONT)

    # Every process of the wedged client is gone (killed, not left stopped or re-parented).
    def left() -> list[int]:  # same PID and start time: not a new process reusing the PID
        return [p for p, start in tree.items() if tree_of(p).get(p) == start]

    wait_until(
        lambda: not left(),
        timeout=30,
        what="the wedged DHT client and its p2pd to be gone",
        on_timeout=lambda: str(left()),
    )
    assert watch.collector.dht_pid not in (None, pid)
    refresh = httpx.get(f"{watch.service_url}/api/v1/state", timeout=5).json()["refresh"]
    assert refresh["errors_total"] > errors_before, refresh
    took = watch.wait(
        "min(petals_collector_up) * min(petals_blocks_covered_ratio)",
        1,
        "coverage seen through the new DHT client",
    )
    print(f"wedged DHT client replaced; coverage seen again {took:.1f} s after the rejoin")


def test_a_whole_outage_reads_as_blind_not_uncovered_and_recovers_by_itself(swarm, watch):
    connects_before = watch.collector.connects
    assert watch.value("min(petals_bootstrap_up)") == 1
    processes = [s.process for s in swarm.servers] + [swarm.bootstrap]
    # All at once: killed one by one (each kill waits for its tree), a read between two kills
    # sees a real partial outage (bootstrap up, blocks uncovered), as it did on a loaded machine.
    for process in processes:
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        assert process is not None
        process.kill()  # reaps the tree

    took = watch.wait("min(petals_collector_up)", 0, "the service to report itself not-up")
    print(f"outage: collector_up 0 after {took:.1f} s (refresh interval {REFRESH_S} s)")
    # Blind, not "every block uncovered": the coverage alert stays quiet, the stale alert's
    # expression is true, and no bootstrap peer is reported up from an old read.
    assert not watch.query(alert_exprs()["PetalsBlockUncovered"])
    assert watch.query(alert_exprs()["PetalsCollectorStale"])
    wait_until(
        lambda: not watch.query("petals_bootstrap_up"),
        timeout=POLL_S,
        what="bootstrap series to disappear while the service is blind",
    )
    # The failed reads still record that the bootstrap peer did not answer.
    wait_until(
        lambda: watch.bootstrap_marks()[-1] == "unreachable",
        timeout=POLL_S,
        what="the bootstrap peer's history to end unreachable",
        on_timeout=lambda: str(watch.bootstrap_marks()),
    )
    assert runs(watch.bootstrap_marks())[-2:] == ["reachable", "unreachable"]

    restart_bootstrap(swarm)
    for old in list(swarm.servers):
        restart_server(swarm, old)
    swarm.wait_until_served(timeout=180)
    took = watch.wait(
        "min(petals_collector_up) * min(petals_blocks_covered_ratio)",
        1,
        "coverage back without restarting the health service",
    )
    print(f"recovery: seen fully covered {took:.1f} s after the swarm was served again")
    assert watch.value("min(petals_bootstrap_up)") == 1
    assert watch.collector.connects > connects_before, "it joined the swarm again by itself"
    boot = runs(watch.bootstrap_marks())
    print(f"history of the bootstrap peer: {boot}")
    assert boot[-3:] == ["reachable", "unreachable", "reachable"]
