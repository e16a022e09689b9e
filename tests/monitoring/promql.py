"""Just enough PromQL reading for the tests: which metric names an expression refers to, and the
expressions inside Grafana dashboards (with dashboard variables filled in)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "atan2", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: not functions, keywords, labels or durations."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the unit of a duration or the exponent of a number
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


# Values that make dashboard expressions valid PromQL outside Grafana.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$window": "15m",
    "$peer": ".+",
    "$host": ".+",
    "$route": ".+",
}


def fill_variables(expr: str, model: str) -> str:
    for name, value in {**GRAFANA_VARIABLES, "$model": model}.items():
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    if "$" in expr:
        raise ValueError(f"unknown dashboard variable in {expr!r}")
    return expr


_VARIABLE_QUERY = re.compile(r"^(?:label_values|query_result)\((.*?)(?:,\s*\w+)?\)$", re.S)


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every PromQL expression: panel targets and template variable queries."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel.get('title')!r} target {target['refId']}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        inner = _VARIABLE_QUERY.match(query.strip())
        yield f"variable ${variable['name']}", inner.group(1) if inner else query
