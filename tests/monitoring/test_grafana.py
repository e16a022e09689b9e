"""Dashboards validate against Grafana's own Dashboard schema (generated from @grafana/schema at
test time) and are provisioned with fixed uids and the datasource by uid."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.monitoring.conftest import MONITORING
from tests.monitoring.procs import DEPS_HINT, require_binary

pytestmark = pytest.mark.monitoring

GRAFANA = MONITORING / "grafana"
SCHEMA_TOOLS = GRAFANA / "schema-tools"
DASHBOARD_TYPES = (
    SCHEMA_TOOLS / "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts"
)
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "petals-prometheus"


@pytest.fixture(scope="session")
def dashboard_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Grafana's Dashboard type as JSON Schema, generated now (never committed)."""
    require_binary("node")
    generator = SCHEMA_TOOLS / "node_modules/.bin/ts-json-schema-generator"
    if not generator.exists() or not DASHBOARD_TYPES.exists():
        pytest.fail(f"npm tools missing in {SCHEMA_TOOLS}; {DEPS_HINT}", pytrace=False)
    out = tmp_path_factory.mktemp("grafana-schema") / "dashboard.schema.json"
    result = subprocess.run(
        [str(generator), "--path", str(DASHBOARD_TYPES), "--type", "Dashboard", "--no-type-check",
         "--out", str(out)],
        cwd=SCHEMA_TOOLS, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    schema: dict[str, Any] = json.loads(out.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_schema_is_strict(dashboard_schema: dict[str, Any]):
    validator = jsonschema.Draft7Validator(dashboard_schema)
    assert not validator.is_valid({"schemaVersion": 39, "title": "x", "colour": "red"})
    assert not validator.is_valid({"title": "no schemaVersion"})


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_matches_grafanas_schema(dashboard_schema: dict[str, Any], path: Path):
    errors = list(jsonschema.Draft7Validator(dashboard_schema).iter_errors(load(path)))
    best = jsonschema.exceptions.best_match(errors)
    assert best is None, f"{path.name} at {'/'.join(map(str, best.absolute_path))}: {best.message}"


def test_dashboards_have_fixed_unique_uids_and_no_numeric_ids():
    assert {p.stem for p in DASHBOARDS} >= {
        "petals-swarm-overview",
        "petals-server-detail",
        "petals-student-experience",
    }
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert uids == [p.stem for p in DASHBOARDS]  # uid = file name: easy to find, never changes
    for path in DASHBOARDS:
        dashboard = load(path)
        assert dashboard["id"] is None, f"{path.name}: dashboard id must be null"
        assert "petals" in dashboard["tags"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_query_uses_the_datasource_by_uid(path: Path):
    dashboard = load(path)
    refs = [node["datasource"] for node in walk(dashboard["panels"]) if "datasource" in node]
    refs += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
    assert refs
    assert all(ref == {"type": "prometheus", "uid": DATASOURCE_UID} for ref in refs), refs
    panels = [n for n in walk(dashboard["panels"]) if "targets" in n]
    assert all(p.get("datasource") for p in panels), "every panel with queries names its datasource"
    for panel in panels:
        assert panel.get("description"), (
            f"{path.name}: panel {panel['title']!r} needs a description"
        )


def test_panel_ids_are_unique_and_panels_do_not_overlap():
    for path in DASHBOARDS:
        panels = list(walk(load(path)["panels"]))
        panels = [p for p in panels if "gridPos" in p]
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), path.name
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (
                f"{path.name}: {panel['title']} is wider than the grid"
            )
            mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
            assert not cells & mine, f"{path.name}: {panel['title']!r} overlaps another panel"
            cells |= mine


def test_provisioning_points_at_the_datasource_and_the_dashboards():
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/petals.yml").read_text())

    assert [d["uid"] for d in datasources["datasources"]] == [DATASOURCE_UID]
    assert datasources["datasources"][0]["type"] == "prometheus"
    assert [p["type"] for p in providers["providers"]] == ["file"]
    assert providers["providers"][0]["options"]["path"]


def test_generated_schema_is_not_committed():
    tracked = subprocess.run(
        ["git", "ls-files", str(GRAFANA)], cwd=GRAFANA, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith(".schema.json") or "node_modules" in f]
    assert "node_modules/" in (SCHEMA_TOOLS / ".gitignore").read_text().split()
