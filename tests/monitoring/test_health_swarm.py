"""`petalctl health` end to end on a real loopback swarm, scraped by a real Prometheus.

One service process watches a swarm the tests change step by step (they run in file order): both
servers are listed and every block covered, the probe measures real generations, a live scrape
passes promtool, an untrusted server is counted and named, a stopped server leaves its blocks
uncovered (and Prometheus' PetalsBlockUncovered expression fires), and SIGINT ends the service
with no process left behind.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarm.launch import BlockRange
from swarm.localswarm import LocalSwarm
from swarm.process import group_members
from tests.monitoring.procs import free_port, require_binary, wait_until
from tests.monitoring.test_prometheus_live import alert_exprs, prometheus

pytestmark = pytest.mark.monitoring

PETALCTL = str(Path(sys.executable).with_name("petalctl"))
Labels = tuple[tuple[str, str], ...]


def petalctl_env() -> dict[str, str]:
    """The test's environment without any PETALS_* setting that could leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PETALS_")}


@dataclasses.dataclass
class HealthProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- petalctl health log ({self.log_path}) ---\n" + "\n".join(text)

    def exposition(self) -> str:
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        response.raise_for_status()
        return response.text

    def samples(self, name: str) -> dict[Labels, float]:
        """Every sample called ``name`` in a fresh scrape: labels without model -> value."""
        found = {}
        for family in text_string_to_metric_families(self.exposition()):
            for sample in family.samples:
                if sample.name == name:
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model"))
                    found[labels] = sample.value
        return found

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples(name).get(tuple(sorted(labels.items())))

    def block_servers(self) -> list[float]:
        per_block = {dict(k)["block"]: v for k, v in self.samples("petals_block_servers").items()}
        return [per_block[str(block)] for block in range(len(per_block))]

    def state(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/state", timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def swarm(swarm_factory) -> LocalSwarm:
    return swarm_factory(num_servers=2, dht_prefix="health-e2e")


@pytest.fixture(scope="module")
def health(swarm: LocalSwarm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthProcess]:
    workdir = tmp_path_factory.mktemp("health")
    port = free_port()
    argv = [
        PETALCTL, "health",
        "--model", swarm.model,
        "--dht-prefix", swarm.dht_prefix,
        "--initial-peers", *swarm.initial_peers,
        "--trusted-servers", *swarm.trusted_peer_ids,
        "--port", str(port),
        "--refresh-interval-s", "1",
        "--reachability-timeout-s", "2",
        "--probe-interval-s", "2",
        "--probe-tokens", "6",
        "--probe-timeout-s", "60",
    ]  # fmt: skip
    log_path = workdir / "health.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,  # no ./swarm.toml from the repository
            env=petalctl_env(),
            start_new_session=True,  # its own group: teardown can see (and reap) every child
        )
    service = HealthProcess(f"http://127.0.0.1:{port}", process, log_path)

    def first_read_done() -> bool:
        if process.poll() is not None:
            pytest.fail(f"petalctl health exited with {process.returncode}\n{service.log_tail()}")
        return httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200

    try:
        wait_until(
            first_read_done,
            timeout=180,
            interval=0.5,
            what="petalctl health to read the swarm",
            on_timeout=service.log_tail,
        )
        yield service
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus_url(health: HealthProcess, tmp_path_factory) -> Iterator[str]:
    with prometheus(tmp_path_factory.mktemp("prometheus"), health.url) as url:
        yield url


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=5).json()
    if body.get("status") != "success":
        raise AssertionError(f"Prometheus refused {expr!r}: {body}")
    return body["data"]["result"]


def test_state_lists_both_servers_and_every_block_is_covered(swarm: LocalSwarm, health):
    def both_online() -> dict[str, Any] | None:
        state = health.state()
        online = [s for s in state["servers"] if s["state"] == "online"]
        return state if len(online) == 2 else None

    state = wait_until(both_online, timeout=60, what="both servers online in /api/v1/state")

    assert {s["peer_id"] for s in state["servers"]} == set(swarm.trusted_peer_ids)
    assert sorted(
        (s["public_name"], s["start_block"], s["end_block"]) for s in state["servers"]
    ) == [
        ("server1", 0, 4),
        ("server2", 4, 8),
    ]
    assert all(s["trusted"] and s["torch_dtype"] == "float32" for s in state["servers"])
    assert state["coverage"]["health"] == "healthy"
    assert state["coverage"]["ratio"] == 1.0
    assert [b["replication"] for b in state["blocks"]] == [1] * 8
    assert state["untrusted_servers"] == [] and state["trusted_missing"] == []

    assert health.block_servers() == [1.0] * 8
    assert health.value("petals_blocks_covered_ratio") == 1.0
    assert health.value("petals_untrusted_servers") == 0.0
    assert health.value("petals_servers", state="online") == 2.0
    assert health.value("petals_collector_up") == 1.0


def test_probe_exports_time_to_first_token_and_tokens_per_second(health):
    ttft = "petals_probe_time_to_first_token_seconds_count"
    speed = "petals_probe_tokens_per_second_count"
    wait_until(
        lambda: (health.value(ttft) or 0) >= 2 and (health.value(speed) or 0) >= 2,
        timeout=120,
        interval=0.5,
        what="two successful probe generations",
        on_timeout=health.log_tail,
    )
    assert (health.value("petals_probe_time_to_first_token_seconds_sum") or 0) > 0
    assert (health.value("petals_probe_tokens_per_second_sum") or 0) > 0
    probe = health.state()["probe"]
    assert probe["last_ttft_s"] > 0 and probe["last_tokens_per_s"] > 0
    assert probe["failures_total"] == 0, probe


def test_live_scrape_passes_promtool(health):
    exposition = health.exposition()
    assert "petals_probe_time_to_first_token_seconds_bucket" in exposition
    assert "petals_server_info" in exposition
    result = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=exposition.encode(),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_prometheus_scrapes_the_live_service(health, prometheus_url):
    wait_until(
        lambda: (
            [float(r["value"][1]) for r in query(prometheus_url, "petals_blocks_covered_ratio")]
            == [1.0]
        ),
        timeout=60,
        what="Prometheus to scrape petals_blocks_covered_ratio = 1",
    )
    assert query(prometheus_url, alert_exprs()["PetalsBlockUncovered"]) == []


def test_an_untrusted_server_is_counted_and_named(swarm: LocalSwarm, health, prometheus_url):
    rogue = swarm.add_server(BlockRange(0, 8), name="rogue", trusted=False)
    try:
        swarm.wait_until_served(servers=[rogue], timeout=180)
        wait_until(
            lambda: health.value("petals_untrusted_servers") == 1.0,
            timeout=60,
            what="petals_untrusted_servers to become 1",
            on_timeout=health.log_tail,
        )
        state = health.state()
        assert [(s["peer_id"], s["public_name"]) for s in state["untrusted_servers"]] == [
            (rogue.identity.peer_id, "rogue")
        ]
        # It announces every block, yet coverage counts only trusted servers.
        assert health.block_servers() == [1.0] * 8
        assert state["coverage"]["health"] == "degraded"
        wait_until(
            lambda: query(prometheus_url, alert_exprs()["PetalsUntrustedServerAnnouncing"]),
            timeout=60,
            what="PetalsUntrustedServerAnnouncing's expression to return a series",
        )
    finally:
        swarm.stop_server(rogue)


def test_stopping_a_server_uncovers_its_blocks(swarm: LocalSwarm, health, prometheus_url):
    second = next(s for s in swarm.servers if s.trusted and s.blocks.start == 4)
    swarm.stop_server(second)  # graceful: petals announces its blocks OFFLINE

    wait_until(
        lambda: health.block_servers() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        timeout=60,
        interval=0.5,
        what="blocks 4-7 to show zero servers in /metrics",
        on_timeout=health.log_tail,
    )
    assert health.value("petals_trusted_server_up", peer_id=second.identity.peer_id) == 0.0
    assert health.value("petals_blocks_covered_ratio") == 0.5
    state = health.state()
    assert state["coverage"]["health"] == "broken"
    assert state["coverage"]["uncovered_blocks"] == [4, 5, 6, 7]
    assert [m["peer_id"] for m in state["trusted_missing"]] == [second.identity.peer_id]

    uncovered = alert_exprs()["PetalsBlockUncovered"]
    series = wait_until(
        lambda: query(prometheus_url, uncovered),
        timeout=60,
        what="PetalsBlockUncovered's expression to be true in Prometheus",
    )
    assert [float(s["value"][1]) for s in series] == [4.0]
    assert series[0]["metric"]["model"] == swarm.model

    # Students would now fail too: the probe says why.
    wait_until(
        lambda: (health.value("petals_probe_failures_total", reason="unavailable") or 0) >= 1,
        timeout=120,
        interval=0.5,
        what="a probe failure with reason 'unavailable'",
        on_timeout=health.log_tail,
    )


def test_sigint_stops_the_service_and_leaves_no_process(health):
    members_before = group_members(health.process.pid)
    assert len(members_before) > 2, "the service should run DHT clients (and their p2pd)"

    health.process.send_signal(signal.SIGINT)
    code = health.process.wait(timeout=90)

    assert code == 0, health.log_tail()
    wait_until(
        lambda: not group_members(health.process.pid),
        timeout=20,
        what="every process of petalctl health's group to exit",
        on_timeout=lambda: f"left: {group_members(health.process.pid)}",
    )
    assert "Traceback" not in health.log_path.read_text(errors="replace"), health.log_tail()


def test_health_refuses_to_start_without_bootstrap_peers(tmp_path: Path):
    result = subprocess.run(
        [PETALCTL, "health", "--model", "petals-team/StableBeluga2", "--no-probe"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=petalctl_env(),
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("petalctl: error: no bootstrap peers: set initial_peers")
    )


def test_health_reads_the_probes_client_settings_from_its_config_file(tmp_path: Path):
    """The probe's [client] table comes from --config too: a bad value there stops the start."""
    config = tmp_path / "elsewhere.toml"
    peer = "/ip4/127.0.0.1/tcp/9/p2p/QmYqpnb37uQgZZDmXyBdv1UVUZ221oupeLpnagyL1DxtYA"
    config.write_text(
        f"[swarm]\nmodel = 'petals-team/StableBeluga2'\ninitial_peers = ['{peer}']\n"
        "[client]\nmax_retries = 0\n"
    )
    result = subprocess.run(
        [PETALCTL, "health", "--config", str(config), "--no-probe"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no swarm.toml here: only --config can name the bad value
        env=petalctl_env(),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("petalctl: error:") and "max_retries" in last, result.stderr
    assert "Traceback" not in result.stderr


def test_health_settings_from_the_health_table_env_and_flags(tmp_path: Path, monkeypatch):
    from monitoring.settings import HealthSettings
    from swarm.errors import ConfigError

    for name in [n for n in os.environ if n.startswith("PETALS_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "swarm.toml"
    config.write_text("[swarm]\nmodel = 'm'\n[health]\nport = 9200\nprobe = false\n")

    from_file = HealthSettings.load(config)
    assert (from_file.port, from_file.probe, from_file.refresh_interval_s) == (9200, False, 15.0)
    monkeypatch.setenv("PETALS_HEALTH_PORT", "9300")
    assert HealthSettings.load(config).port == 9300
    assert HealthSettings.load(config, port="9400").port == 9400
    with pytest.raises(ConfigError, match=r"probe_tokens = '1'.*--probe-tokens"):
        HealthSettings.load(config, probe_tokens="1")
