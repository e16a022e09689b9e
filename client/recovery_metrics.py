"""Prometheus view of a client's recoveries (``RecoveryMetrics``), for any /metrics that serves a
``SwarmClient``: the gateway's, the bot's (labelled by model). A custom collector reads the
counters at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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


# Where the counters come from, read at each scrape: (label values, metrics) per client.
Sources = Callable[[], Iterable[tuple[Sequence[str], RecoveryMetrics]]]


class RecoveryCollector:
    def __init__(self, sources: Sources, labelnames: Sequence[str] = ()) -> None:
        self.sources, self.labelnames = sources, list(labelnames)

    def collect(self) -> Iterator[Metric]:
        found = list(self.sources())
        for name, (attribute, doc) in _COUNTERS.items():
            counter = CounterMetricFamily(name, doc, labels=self.labelnames)
            for values, metrics in found:
                counter.add_metric(list(values), float(getattr(metrics, attribute)))
            yield counter
        gauge = GaugeMetricFamily(
            "petals_client_requests_waiting_for_capacity",
            "requests waiting now for room in the servers' attention caches",
            labels=self.labelnames,
        )
        for values, metrics in found:
            gauge.add_metric(list(values), float(metrics.waiting_for_capacity))
        yield gauge


def register_recovery_metrics(registry: Any, client: Any) -> None:
    """Expose ``client.recovery_metrics`` on ``registry`` (a prometheus CollectorRegistry)."""
    registry.register(RecoveryCollector(lambda: [((), client.recovery_metrics)]))


def register_recovery_sources(registry: Any, sources: Sources, labelnames: Sequence[str]) -> None:
    """Expose the counters of clients that come and go (the bot's engines connect lazily and
    reconnect): ``sources()`` lists (label values, RecoveryMetrics) of those running now."""
    registry.register(RecoveryCollector(sources, labelnames))
