"""The tests' own PromQL reader must itself be right, or the dashboard checks prove nothing."""

from __future__ import annotations

import pytest

from tests.monitoring.promql import dashboard_exprs, fill_variables, metric_names

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('petals_servers{model="m", state="online"}', {"petals_servers"}),
        (
            "histogram_quantile(0.5, sum by (le) (rate(petals_probe_tokens_bucket[15m])))",
            {"petals_probe_tokens_bucket"},
        ),
        (
            "time() - petals_collector_last_refresh_timestamp_seconds offset 5m > 1e-9",
            {"petals_collector_last_refresh_timestamp_seconds"},
        ),
        (
            'a * on (model, peer_id) group_left (public_name) max by (model) (b{x="on(c)"})',
            {"a", "b"},
        ),
        (
            "x > on() group_left() petals:threshold:y and z unless w",
            {"x", "petals:threshold:y", "z", "w"},
        ),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_fill_variables_refuses_unknown_ones():
    assert fill_variables('x{model="$model"}[$__rate_interval]', "m") == 'x{model="m"}[1m]'
    with pytest.raises(ValueError, match="unknown dashboard variable"):
        fill_variables('x{a="$nope"}', "m")


def test_dashboard_exprs_reads_rows_targets_and_variables():
    dashboard = {
        "panels": [
            {
                "type": "row",
                "title": "r",
                "panels": [{"title": "p", "targets": [{"refId": "A", "expr": "a"}]}],
            },
            {"title": "q", "targets": [{"refId": "B", "expr": "b"}]},
        ],
        "templating": {
            "list": [
                {"type": "query", "name": "model", "query": {"query": "label_values(c, model)"}},
                {"type": "query", "name": "peer", "query": 'query_result(d{x="1"})'},
                {"type": "interval", "name": "window", "query": "15m,1h"},
            ]
        },
    }

    assert [expr for _, expr in dashboard_exprs(dashboard)] == ["a", "b", "c", 'd{x="1"}']
