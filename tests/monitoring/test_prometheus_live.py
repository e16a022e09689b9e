"""A real Prometheus (Debian's) scrapes the health service and evaluates the committed rules;
every alert expression and every dashboard expression is checked against it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.snapshot import BootstrapRecord, SwarmSnapshot, coverage_ratio
from tests.monitoring.conftest import MONITORING, Service, _service
from tests.monitoring.procs import free_port, http_ok, managed_process, require_binary, wait_until
from tests.monitoring.promql import dashboard_exprs, fill_variables, metric_names
from tests.monitoring.synthetic import MODEL, peer, server, snapshot

pytestmark = pytest.mark.monitoring

PROMETHEUS_DIR = MONITORING / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "petals-alerts.yml"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
TRUSTED = (peer("gpu-a"), peer("gpu-b"), peer("gpu-c"))


def seen_through_the_dht(snap: SwarmSnapshot) -> SwarmSnapshot:
    """As the collector reads it: one bootstrap peer answering, some DHT peers connected."""
    boot = peer("bootstrap")
    record = BootstrapRecord(
        address=f"/ip4/127.0.0.1/tcp/31337/p2p/{boot}", peer_id=boot, reachable=True, rtt_s=0.002
    )
    servers = tuple(s.model_copy(update={"rtt_s": 0.003}) for s in snap.servers)
    return snap.model_copy(update={"bootstraps": (record,), "dht_peers": 3, "servers": servers})


def healthy() -> SwarmSnapshot:
    return seen_through_the_dht(snapshot(
        server("gpu-a", 0, 8), server("gpu-b", 0, 4), server("gpu-c", 4, 8),
        replication_target=2, trusted=TRUSTED,
    ))  # fmt: skip


def thin() -> SwarmSnapshot:
    """Every block served, some by one server only; gpu-c is gone."""
    return seen_through_the_dht(
        snapshot(
            server("gpu-a", 0, 8), server("gpu-b", 0, 4), replication_target=2, trusted=TRUSTED
        )
    )


def broken() -> SwarmSnapshot:
    """Blocks 6-7 uncovered, gpu-b joining, gpu-c gone, an intruder announcing everything."""
    return seen_through_the_dht(
        snapshot(
            server("gpu-a", 0, 6),
            server("gpu-b", 4, 8, state="joining"),
            server("mallory", 0, 8, trusted=False),
            replication_target=2,
            trusted=TRUSTED,
        )
    )


@dataclasses.dataclass
class Stack:
    service: Service
    prometheus_url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=5
        )
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {expr!r}: {body.get('error', body)}")
        return body["data"]["result"]

    def show(self, current: SwarmSnapshot) -> None:
        """Serve ``current`` and wait until Prometheus has scraped it."""
        self.service.fetch.set(current)
        want = coverage_ratio(current)
        wait_until(
            lambda: any(
                float(r["value"][1]) == want
                for r in self.query(f'petals_blocks_covered_ratio{{model="{MODEL}"}}')
            ),
            timeout=30,
            what=f"Prometheus to scrape petals_blocks_covered_ratio={want}",
        )


def prometheus_config(app_port: int) -> dict[str, Any]:
    """The committed prometheus.yml, pointed at the test's service and sped up to 1 s."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config.pop("alerting", None)
    config["rule_files"] = [str(PROMETHEUS_DIR / path) for path in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "petals-health"]
    assert len(jobs) == 1, "prometheus.yml must scrape the health service as job petals-health"
    jobs[0]["static_configs"] = [{"targets": [f"127.0.0.1:{app_port}"]}]
    config["scrape_configs"] = jobs
    return config


@contextlib.contextmanager
def prometheus(tmp_path: Path, app_url: str) -> Iterator[str]:
    binary = require_binary("prometheus")
    port = free_port()
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(prometheus_config(int(app_url.rsplit(":", 1)[1]))))
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with managed_process(argv, tmp_path / "prometheus.log", ready=http_ok(f"{url}/-/ready")):
        yield url


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with _service(healthy()) as service, prometheus(tmp_path, service.url) as url:
        yield Stack(service, url)


def alert_exprs() -> dict[str, str]:
    """The swarm alerts' expressions; Watchdog always fires (test_alert_pipeline.py covers it)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        r["alert"]: r["expr"]
        for g in groups
        for r in g["rules"]
        if "alert" in r and r["alert"] != "Watchdog"
    }


def bad_probe(stack: Stack) -> Callable[[], None]:
    """Each call: one slow success (12 s to the first token) and two failures."""

    def run() -> None:
        stack.service.metrics.observe_probe(ttft_s=12.0, tokens_per_s=1.0)
        stack.service.metrics.probe_failed("timeout")
        stack.service.metrics.probe_failed("unavailable")

    return run


def expect_alerts(stack: Stack, firing: set[str], feed: Callable[[], None] | None = None) -> None:
    """Wait until exactly ``firing`` alert expressions return series."""
    exprs = alert_exprs()
    seen: dict[str, bool] = {}

    def matches() -> bool:
        if feed:
            feed()
        seen.clear()
        seen.update({name: bool(stack.query(expr)) for name, expr in exprs.items()})
        return {name for name, fires in seen.items() if fires} == firing

    wait_until(
        matches,
        timeout=40,
        interval=0.5,
        what=f"alert expressions returning series for exactly {sorted(firing)}",
        on_timeout=lambda: f"last seen: {seen}",
    )


def test_prometheus_scrapes_the_service(stack: Stack):
    stack.show(thin())

    up = stack.query('up{job="petals-health"}')
    assert [float(r["value"][1]) for r in up] == [1.0]
    blocks = stack.query(f'petals_block_servers{{model="{MODEL}"}}')
    assert sorted((int(r["metric"]["block"]), float(r["value"][1])) for r in blocks) == [
        (0, 2), (1, 2), (2, 2), (3, 2), (4, 1), (5, 1), (6, 1), (7, 1),
    ]  # fmt: skip


def test_alert_expressions_follow_the_swarm(stack: Stack):
    every = alert_exprs()
    for expr in every.values():
        stack.query(expr)  # every expression parses and evaluates
    assert "PetalsBlockUncovered" in every

    stack.show(healthy())
    expect_alerts(stack, set())

    stack.show(thin())
    expect_alerts(stack, {"PetalsReplicationBelowTarget", "PetalsTrustedServerDown"})

    stack.show(broken())
    expect_alerts(
        stack,
        {
            "PetalsBlockUncovered",
            "PetalsTrustedServerDown",
            "PetalsUntrustedServerAnnouncing",
            "PetalsProbeFailing",
            "PetalsProbeSlowFirstToken",
        },
        feed=bad_probe(stack),
    )
    # Prometheus' own rule evaluation agrees: the alert is pending (its for: is 1m).
    alerts = stack.query('ALERTS{alertname="PetalsBlockUncovered"}')
    assert [a["metric"]["alertstate"] for a in alerts] == ["pending"]
    assert alerts[0]["metric"]["model"] == MODEL

    stack.service.fetch.fail(TimeoutError("DHT lookup timed out"))
    wait_until(
        lambda: stack.query(every["PetalsCollectorStale"]),
        timeout=30,
        what="PetalsCollectorStale's expression to return a series",
    )


def exported_names(exposition: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


# node_exporter's names the host dashboard and alerts use (node_exporter 1.x, with
# --collector.systemd), and Prometheus' own per-target series.
NODE_EXPORTER_NAMES = {
    "node_memory_MemAvailable_bytes", "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_systemd_unit_state",
}  # fmt: skip
PROMETHEUS_NAMES = {"up"}
# Dashboards fed by the health service alone; the others chart the gateway, node_exporter and the
# GPU exporters, which this test does not run: their queries must parse and name exported metrics.
HEALTH_DASHBOARDS = {"petals-swarm-overview", "petals-server-detail", "petals-student-experience"}


def other_exporters_names() -> set[str]:
    """Names the gateway and the GPU exporter really export (their own registries)."""
    from client.gateway.metrics import GatewayMetrics
    from monitoring.gpu_exporter import GpuExporter
    from tests.monitoring.fake_nvml import FakeGpu, FakeNvml

    gateway = GatewayMetrics()
    for route in ("openai_chat",):
        gateway.requests.labels(route, "200").inc()
        gateway.errors.labels(route, "timeout").inc()
        gateway.ttft.labels(route).observe(0.5)
        gateway.speed.labels(route).observe(10)
        gateway.tokens.labels(route).inc()
        gateway.stops.labels(route, "length").inc()
        gateway.active.labels(route).set(0)
    gpu = GpuExporter(nvml=FakeNvml([FakeGpu("GPU-0")]), hostname="h")
    try:
        return exported_names(generate_latest(gateway.registry).decode()) | exported_names(
            gpu.exposition().decode()
        )
    finally:
        gpu.close()


def test_dashboard_queries_run_and_use_exported_metrics(stack: Stack):
    exprs = []
    for path in DASHBOARDS:
        found = list(dashboard_exprs(json.loads(path.read_text())))
        assert found, f"{path.name} has no queries"
        exprs += [
            (path.stem, f"{path.name} {where}", fill_variables(expr, MODEL))
            for where, expr in found
        ]
    assert {path.stem for path in DASHBOARDS} >= HEALTH_DASHBOARDS | {
        "petals-hosts-gpus",
        "petals-gateway",
    }
    stack.show(broken())
    feed = bad_probe(stack)
    feed()

    exported = exported_names(httpx.get(f"{stack.service.url}/metrics", timeout=5).text)
    known = exported | other_exporters_names() | NODE_EXPORTER_NAMES | PROMETHEUS_NAMES
    for _, where, expr in exprs:
        unknown = metric_names(expr) - known
        assert not unknown, f"{where}: {sorted(unknown)} not exported by any of the kit's exporters"
        stack.query(expr)  # Prometheus parses and runs it (raises on a refused query)

    empty: list[str] = []
    health = [(where, expr) for stem, where, expr in exprs if stem in HEALTH_DASHBOARDS]

    def all_return_series() -> bool:
        feed()
        empty[:] = [f"{where}: {expr}" for where, expr in health if not stack.query(expr)]
        return not empty

    wait_until(
        all_return_series,
        timeout=40,
        interval=0.5,
        what="every health dashboard query to return series",
        on_timeout=lambda: "still empty:\n" + "\n".join(empty),
    )
