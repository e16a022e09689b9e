"""The whole alert path with real parts: health service -> Prometheus (the committed rules) ->
Alertmanager (the committed config) -> a webhook sink standing where the Discord bot listens.

Only the timers are shortened (rules' for/keep_firing_for, group and repeat intervals), so the
test waits seconds instead of minutes. It shows the Watchdog arriving again and again (what the
bot's dead-man's switch relies on), and a critical alert that keeps firing across a scrape gap —
no RESOLVED reaches the bot while the health service is gone — while PetalsCollectorStale, which
the gap sets off, holds the coverage alerts back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.monitoring.conftest import MONITORING, _service
from tests.monitoring.procs import free_port, http_ok, managed_process, require_binary, wait_until
from tests.monitoring.synthetic import peer, server, snapshot
from tests.monitoring.webhook_sink import BOT_PATH, Sink, running_sink

pytestmark = pytest.mark.monitoring

PROMETHEUS_DIR = MONITORING / "prometheus"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager" / "alertmanager.yml"
FOR_S = "2s"
KEEP_FIRING_S = "120s"  # far longer than the test's gap: the alert must hold through it


@pytest.fixture
def sink() -> Iterator[Sink]:
    with running_sink() as sink:
        yield sink


def shortened_rules(tmp_path: Path) -> list[str]:
    """The committed rule files with every for/keep_firing_for shortened to seconds."""
    paths = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("for") and rule["for"] != "0m":
                    rule["for"] = FOR_S
                if "keep_firing_for" in rule:
                    rule["keep_firing_for"] = KEEP_FIRING_S
        target = tmp_path / path.name
        target.write_text(yaml.safe_dump(rules))
        paths.append(str(target))
    return paths


@contextlib.contextmanager
def alertmanager(tmp_path: Path, webhook: str) -> Iterator[str]:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook
    config["route"].update(group_wait="1s", group_interval="1s")
    for route in config["route"]["routes"]:
        route.update(group_wait="0s", group_interval="1s", repeat_interval="2s")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        require_binary("prometheus-alertmanager"),
        f"--config.file={path}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    with managed_process(argv, tmp_path / "alertmanager.log", ready=http_ok(f"{url}/-/ready")):
        yield url


@contextlib.contextmanager
def prometheus(tmp_path: Path, health_url: str, alertmanager_url: str) -> Iterator[str]:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [alertmanager_url.removeprefix("http://")]}
    ]
    config["rule_files"] = shortened_rules(tmp_path)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "petals-health"]
    jobs[0]["static_configs"] = [{"targets": [health_url.removeprefix("http://")]}]
    config["scrape_configs"] = jobs
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        require_binary("prometheus"),
        f"--config.file={path}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    with managed_process(argv, tmp_path / "prometheus.log", ready=http_ok(f"{url}/-/ready")):
        yield url


def firing_in_prometheus(url: str) -> set[str]:
    alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def alertmanager_states(url: str) -> dict[str, str]:
    found = httpx.get(f"{url}/api/v2/alerts", timeout=5).json()
    return {a["labels"]["alertname"]: a["status"]["state"] for a in found}


def test_watchdog_repeats_and_a_critical_survives_a_scrape_gap(tmp_path: Path, sink: Sink):
    uncovered = snapshot(server("gpu-a", 0, 6), trusted=(peer("gpu-a"),))  # blocks 6-7 unserved
    with alertmanager(tmp_path, sink.url) as am_url, contextlib.ExitStack() as health:
        service = health.enter_context(_service(uncovered))
        with prometheus(tmp_path, service.url, am_url) as prom_url:
            _watch_the_gap(sink, health, am_url, prom_url)


def _watch_the_gap(sink: Sink, health: contextlib.ExitStack, am_url: str, prom_url: str) -> None:

    # The dead-man's switch: Watchdog reaches the bot's path, and keeps arriving.
    wait_until(
        lambda: len(sink.notifications("Watchdog", "firing")) >= 3,
        timeout=60,
        what="three Watchdog notifications at the bot's webhook",
    )
    assert {b["path"] for b in sink.bodies()} == {BOT_PATH}

    wait_until(
        lambda: sink.notifications("PetalsBlockUncovered", "firing"),
        timeout=60,
        what="PetalsBlockUncovered firing at the webhook",
    )

    health.close()  # the health service dies: its series stop, up{job="petals-health"} is 0
    seen: dict[str, Any] = {}

    def stale_took_over() -> bool:
        seen["prometheus"] = firing_in_prometheus(prom_url)
        seen["alertmanager"] = alertmanager_states(am_url)
        return bool(sink.notifications("PetalsCollectorStale", "firing")) and (
            seen["alertmanager"].get("PetalsBlockUncovered") == "suppressed"
        )

    wait_until(
        stale_took_over,
        timeout=60,
        interval=0.5,
        what="PetalsCollectorStale at the webhook, holding PetalsBlockUncovered back",
        on_timeout=lambda: f"last seen: {seen}",
    )
    # Across the gap the critical still fires in Prometheus (keep_firing_for), so the bot
    # was never told it resolved.
    assert "PetalsBlockUncovered" in firing_in_prometheus(prom_url)
    up = httpx.get(
        f"{prom_url}/api/v1/query", params={"query": "petals_block_servers"}, timeout=5
    ).json()["data"]["result"]
    assert up == [], "the gap is real: no coverage series at all"
    assert sink.notifications("PetalsBlockUncovered", "resolved") == []
    assert len(sink.notifications("Watchdog", "firing")) > 3  # still alive through the gap


def test_the_committed_config_sends_watchdog_to_the_bot_every_minute():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    route = next(r for r in config["route"]["routes"] if r["matchers"] == ['alertname="Watchdog"'])
    receivers = {r["name"]: r for r in config["receivers"]}
    urls = {hook["url"] for hook in receivers[route["receiver"]]["webhook_configs"]}
    main = {hook["url"] for hook in receivers[config["route"]["receiver"]]["webhook_configs"]}
    assert urls == main and all(url.endswith(BOT_PATH) for url in urls)
    assert route["repeat_interval"] == "1m" and route["group_interval"] == "1m"
