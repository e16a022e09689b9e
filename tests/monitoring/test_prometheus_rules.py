"""The committed Prometheus config and alert rules pass promtool, and every alert is tested."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.monitoring.conftest import MONITORING
from tests.monitoring.procs import require_binary

pytestmark = pytest.mark.monitoring

PROMETHEUS = MONITORING / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
# Each rule file keeps its thresholds in one group of petals:threshold:* records.
THRESHOLD_GROUPS = {"petals-alerts.yml": "petals-thresholds", "host-alerts.yml": "host-thresholds"}
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER = MONITORING / "alertmanager" / "alertmanager.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [require_binary("promtool"), *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def alert_rules() -> list[dict]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_prometheus_loads_every_rule_file():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert sorted(config["rule_files"]) == sorted(f"rules/{p.name}" for p in RULE_FILES)


def test_prometheus_config_is_valid():
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml").stdout


def test_alert_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", *map(str, RULE_FILES)).stdout


def test_alert_rule_unit_tests_pass():
    assert RULE_TESTS
    promtool("test", "rules", *map(str, RULE_TESTS))


def test_alertmanager_config_is_valid():
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(ALERTMANAGER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_follow_the_conventions():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert set(names) >= {
        "PetalsBlockUncovered",
        "PetalsReplicationBelowTarget",
        "PetalsTrustedServerDown",
        "PetalsUntrustedServerAnnouncing",
        "PetalsProbeFailing",
        "PetalsProbeSlowFirstToken",
        "PetalsCollectorStale",
        "PetalsProbeHung",
        "PetalsBootstrapDown",
        "Watchdog",
        "HostDown",
        "HostFilesystemAlmostFull",
        "HostMemoryLow",
        "HostSystemdUnitFailed",
        "GpuMissing",
        "GpuXidError",
        "GpuTemperatureHigh",
        "GpuEccDoubleBitErrors",
        "GpuMemoryAlmostFull",
    }
    assert len(names) == len(set(names))
    for rule in rules:
        name = rule["alert"]
        if name == "Watchdog":  # the dead-man's switch: always firing, never a page
            assert rule["expr"].strip() == "vector(1)"
            assert rule["labels"]["severity"] == "none"
            continue
        assert name.startswith(("Petals", "Host", "Gpu")), f"{name}: prefix with its component"
        assert name[0].isupper() and "_" not in name, name
        assert rule.get("for"), f"{name} needs a for:"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])

    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a promtool case where they fire"
    # Watchdog is never quiet: that is its whole point.
    assert names - quiet == {"Watchdog"}, "alerts without a promtool case where they stay quiet"
    assert (firing | quiet) - names == set(), "promtool cases for alerts that do not exist"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_thresholds_live_in_one_group(path):
    groups = yaml.safe_load(path.read_text())["groups"]
    thresholds = [g for g in groups if g["name"] == THRESHOLD_GROUPS[path.name]]
    assert len(thresholds) == 1
    assert all(r["record"].startswith("petals:threshold:") for r in thresholds[0]["rules"])
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        if rule["alert"] == "Watchdog":
            continue
        # Alerts compare with petals:threshold:* series; only 0 ("none", "down") may be literal.
        literals = set(re.findall(r"(?<![\w.:\[])\d+(?:\.\d+)?(?![\w.])", rule["expr"]))
        assert literals <= {"0"}, f"{rule['alert']}: move {literals - {'0'}} to petals-thresholds"
