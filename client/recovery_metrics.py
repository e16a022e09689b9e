"""Prometheus view of a client's recoveries (``RecoveryMetrics``), for any /metrics that serves a
``SwarmClient``: the gateway's, the bot's. A custom collector reads the counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from client.failover import RecoveryMetrics

_COUNTERS = {
    "petals_client_recoveries": (
        "recoveries_total",
        "answers continued on a new route after a server failed",
    ),
    "petals_client_recovery_seconds": (
        "recovery_seconds_sum",
        "seconds without tokens at recoveries (the stall a student saw), summed",
    ),
    "petals_client_requests_failed_after_recovery_budget": (
        "failed_after_budget_total",
        "requests that failed: no trusted replica left, or the recovery budget was spent",
    ),
    "petals_client_peers_quarantined": (
        "quarantined_total",
        "servers kept off routes after failing, until they announced again",
    ),
    "petals_client_capacity_waits": (
        "capacity_waits_total",
        "requests that waited in line because the servers' attention caches were full",
    ),
}


class RecoveryCollector:
    def __init__(self, metrics: RecoveryMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for name, (attribute, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(getattr(self.metrics, attribute)))
        yield GaugeMetricFamily(
            "petals_client_requests_waiting_for_capacity",
            "requests waiting now for room in the servers' attention caches",
            value=float(self.metrics.waiting_for_capacity),
        )


def register_recovery_metrics(registry: Any, client: Any) -> None:
    """Expose ``client.recovery_metrics`` on ``registry`` (a prometheus CollectorRegistry)."""
    registry.register(RecoveryCollector(client.recovery_metrics))
