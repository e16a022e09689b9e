"""Prometheus metrics of the health service, on a registry of its own per service instance.

Swarm series come from a custom collector that formats the refresher's last snapshot at scrape
time, so the series of a server that left the DHT disappear with it. Probe series (time to first
token, tokens/s) are ordinary histograms and counters that the probe feeds through
``HealthMetrics.observe_probe`` and ``HealthMetrics.probe_failed``.
"""

from __future__ import annotations

import bisect
import dataclasses
import importlib.metadata
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from monitoring import snapshot as swarm
from monitoring.refresher import RefreshStatus

# Bucket bounds chosen around what students saw on the public swarm (first token after 4-55 s,
# 1.4 tokens/s) and what a private swarm should do (well under a second, tens of tokens/s).
# 10 s is a bound on purpose: PetalsProbeSlowFirstToken compares the median with it.
TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60)
TOKENS_PER_S_BUCKETS = (0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200)

ProbeFailureReason = Literal["timeout", "unavailable", "error"]
PROBE_FAILURE_REASONS: tuple[ProbeFailureReason, ...] = get_args(ProbeFailureReason)

# Anyone who can reach the DHT can announce blocks; cap their per-server series so a flood of fake
# peers cannot blow up Prometheus. petals_untrusted_servers still counts them all.
MAX_UNTRUSTED_SERVER_SERIES = 32


def kit_version() -> str:
    try:
        return importlib.metadata.version("petals-swarm-kit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _label(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclasses.dataclass(frozen=True)
class ProbeStatus:
    """The probe's recent history, for /api/v1/state and the page (times are unix seconds)."""

    runs_total: int = 0
    failures_total: int = 0
    last_success_at: float | None = None
    last_ttft_s: float | None = None
    last_tokens_per_s: float | None = None
    last_failure_at: float | None = None
    last_failure_reason: ProbeFailureReason | None = None
    last_failure_detail: str | None = None
    in_progress_since: float | None = None  # start of the generation under way, if any


class SwarmCollector(Collector):
    """Formats the refresher's last snapshot and its own health as metric families."""

    def __init__(self, status: Callable[[], RefreshStatus], model: str, version: str) -> None:
        self._status = status
        self._model = model
        self._version = version

    def describe(self) -> Iterable[Metric]:
        # Families depend on the snapshot; an empty description skips prometheus_client's
        # name-collision check instead of running a collection at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from self._collector_families(status)
        if status.snapshot is not None:
            yield from swarm_families(status.snapshot)
            if status.last_ok:
                # What the last read saw of the DHT itself; after a failed read it is unknown,
                # and petals_collector_up says so.
                yield from dht_families(status.snapshot)

    def _collector_families(self, status: RefreshStatus) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "petals_health_info",
            "Version of the petals-swarm-kit health service.",
            labels=["version"],
        )
        info.add_metric([self._version], 1)
        yield info
        labels = ["model"]
        up = GaugeMetricFamily(
            "petals_collector_up",
            "1 if the last read of the swarm's DHT succeeded, else 0.",
            labels=labels,
        )
        up.add_metric([self._model], 1 if status.last_ok else 0)
        yield up
        errors = CounterMetricFamily(
            "petals_collector_refresh_errors",
            "Reads of the swarm's DHT that failed since the service started.",
            labels=labels,
        )
        errors.add_metric([self._model], status.errors_total)
        yield errors
        if status.last_success_at is not None:
            last = GaugeMetricFamily(
                "petals_collector_last_refresh_timestamp_seconds",
                "Unix time of the last successful read of the swarm's DHT.",
                labels=labels,
            )
            last.add_metric([self._model], status.last_success_at)
            yield last
        if status.last_duration_s is not None:
            duration = GaugeMetricFamily(
                "petals_collector_refresh_duration_seconds",
                "How long the last read of the swarm's DHT took, successful or not.",
                labels=labels,
            )
            duration.add_metric([self._model], status.last_duration_s)
            yield duration


def dht_families(snap: swarm.SwarmSnapshot) -> Iterator[Metric]:
    """The collector's view of the DHT: connected peers and each bootstrap peer (pure)."""
    if snap.dht_peers is not None:
        peers = GaugeMetricFamily(
            "petals_dht_peers",
            "Peers the health service's DHT client is connected to (0: it is cut off).",
            labels=["model"],
        )
        peers.add_metric([snap.model], snap.dht_peers)
        yield peers
    boot_up = GaugeMetricFamily(
        "petals_bootstrap_up",
        "1 if the configured bootstrap peer answered a DHT ping during the last read, else 0.",
        labels=["model", "peer_id", "address"],
    )
    boot_rtt = GaugeMetricFamily(
        "petals_bootstrap_rtt_seconds",
        "Round trip of the last DHT ping to the bootstrap peer (absent: no answer).",
        labels=["model", "peer_id", "address"],
    )
    for boot in snap.bootstraps:
        labels = [snap.model, boot.peer_id, boot.address]
        boot_up.add_metric(labels, 1 if boot.reachable else 0)
        if boot.rtt_s is not None:
            boot_rtt.add_metric(labels, boot.rtt_s)
    yield boot_up
    yield boot_rtt


def cache_tokens_per_block(server: swarm.ServerRecord) -> float | None:
    """Free attention-cache tokens per served block. Petals announces ``cache_tokens_left`` as
    its free cache bytes over the bytes of one token's key *or* value in one block, i.e. slots
    summed over its blocks and over K and V; health.petals.dev divides by 2 x span, so do we."""
    if server.cache_tokens_left is None:
        return None
    return server.cache_tokens_left / (2 * server.num_blocks)


def swarm_families(snap: swarm.SwarmSnapshot) -> Iterator[Metric]:
    """Metric families describing one snapshot (pure: no clock, no I/O)."""
    model = snap.model

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["model"])
        family.add_metric([model], value)
        return family

    yield gauge("petals_model_blocks", "Transformer blocks in the served model.", snap.num_blocks)
    yield gauge(
        "petals_replication_target",
        "Trusted online servers wanted for every block.",
        snap.replication_target,
    )
    yield gauge(
        "petals_blocks_covered_ratio",
        "Share of blocks (0-1) served by at least one trusted online server.",
        swarm.coverage_ratio(snap),
    )
    yield gauge(
        "petals_block_min_replication",
        "Fewest trusted online servers serving any one block (0: a block is uncovered).",
        swarm.min_replication(snap),
    )
    yield gauge(
        "petals_untrusted_servers",
        "Peers not on the trusted list announcing blocks of the model (intrusion signal).",
        len(swarm.untrusted_servers(snap)),
    )

    per_block = GaugeMetricFamily(
        "petals_block_servers",
        "Trusted online servers serving each block.",
        labels=["model", "block"],
    )
    for block, count in enumerate(swarm.replication(snap)):
        per_block.add_metric([model, str(block)], count)
    yield per_block

    by_state = GaugeMetricFamily(
        "petals_servers",
        "Trusted servers per state; configured trusted peers missing from the DHT count as "
        "offline.",
        labels=["model", "state"],
    )
    for state, count in swarm.trusted_states(snap).items():
        by_state.add_metric([model, state], count)
    yield by_state

    trusted_up = GaugeMetricFamily(
        "petals_trusted_server_up",
        "1 if a configured trusted server is online in the DHT, 0 if it is not or is missing.",
        labels=["model", "peer_id"],
    )
    online = swarm.trusted_online_peers(snap)
    for peer in snap.trusted_peer_ids:
        trusted_up.add_metric([model, peer], 1 if peer in online else 0)
    yield trusted_up

    yield from _server_families(snap)


def _server_families(snap: swarm.SwarmSnapshot) -> Iterator[Metric]:
    model = snap.model
    untrusted = sorted((s for s in snap.servers if not s.trusted), key=lambda s: s.peer_id)
    servers = [s for s in snap.servers if s.trusted] + untrusted[:MAX_UNTRUSTED_SERVER_SERIES]

    info = GaugeMetricFamily(
        "petals_server_info",
        "Always 1; labels describe a server announcing blocks of the model.",
        labels=[
            "model",
            "peer_id",
            "public_name",
            "version",
            "torch_dtype",
            "quant_type",
            "relay",
            "trusted",
        ],
    )
    for s in servers:
        info.add_metric(
            [
                model,
                s.peer_id,
                _label(s.public_name),
                _label(s.version),
                _label(s.torch_dtype),
                _label(s.quant_type),
                _label(s.using_relay),
                _label(s.trusted),
            ],
            1,
        )
    yield info

    per_server: list[tuple[str, str, Callable[[swarm.ServerRecord], float | None]]] = [
        ("petals_server_up", "1 if the server announces itself online, else 0.",
         lambda s: 1 if s.state == "online" else 0),
        ("petals_server_start_block", "First block the server serves.", lambda s: s.start_block),
        ("petals_server_end_block", "One past the last block the server serves.",
         lambda s: s.end_block),
        ("petals_server_throughput_rps", "Throughput the server announces (petals' RPS).",
         lambda s: s.throughput),
        ("petals_server_inference_rps", "Inference speed the server announces (RPS).",
         lambda s: s.inference_rps),
        ("petals_server_forward_rps", "Forward-pass speed the server announces (RPS).",
         lambda s: s.forward_rps),
        ("petals_server_network_rps", "Network speed the server announces (RPS).",
         lambda s: s.network_rps),
        ("petals_server_cache_tokens_left",
         "Attention cache tokens the server has free per block (a new session of this many "
         "tokens fits on each of its blocks): petals' announced cache_tokens_left divided by "
         "2 x blocks served, as health.petals.dev does.",
         cache_tokens_per_block),
        ("petals_server_ping_rtt_seconds",
         "Round trip of the last ping through the swarm to the server (absent: no answer).",
         lambda s: s.rtt_s),
    ]  # fmt: skip
    for name, doc, value_of in per_server:
        family = GaugeMetricFamily(name, doc, labels=["model", "peer_id"])
        for s in servers:
            value = value_of(s)
            if value is not None:  # unknown stays absent rather than reading as 0
                family.add_metric([model, s.peer_id], value)
        yield family


class _Histogram:
    """Bucket counts for one histogram series; prometheus_client's own Histogram would also export
    a ``_created`` gauge per series, noise for Prometheus' text format."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = list(itertools.accumulate(self.counts))
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        return list(zip(les, cumulative, strict=True))


class HealthMetrics:
    """The service's registry: swarm series from the refresher, probe series fed by the probe.

    The probe calls ``observe_probe`` after each successful generation and ``probe_failed`` after
    each failed one; both are thread-safe.
    """

    def __init__(
        self,
        model: str,
        status: Callable[[], RefreshStatus],
        *,
        version: str | None = None,
    ) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(SwarmCollector(status, model, version or kit_version()))
        self.registry.register(_ProbeCollector(self))
        self._lock = threading.Lock()
        self._probe = ProbeStatus()
        self._failures = dict.fromkeys(PROBE_FAILURE_REASONS, 0)
        self._ttft = _Histogram(TTFT_BUCKETS_S)
        self._tokens_per_s = _Histogram(TOKENS_PER_S_BUCKETS)

    def probe_started(self) -> None:
        """A probe generation begins (loading the client counts): a hang shows as its age."""
        with self._lock:
            self._probe = dataclasses.replace(self._probe, in_progress_since=time.time())

    def probe_abandoned(self) -> None:
        """The generation under way ended without a result (the service is stopping)."""
        with self._lock:
            self._probe = dataclasses.replace(self._probe, in_progress_since=None)

    def observe_probe(self, ttft_s: float, tokens_per_s: float) -> None:
        """Record one successful probe generation: seconds to the first token, then tokens/s."""
        if not (ttft_s >= 0 and tokens_per_s >= 0):  # also refuses NaN
            raise ValueError(
                f"observe_probe: ttft_s={ttft_s!r} and tokens_per_s={tokens_per_s!r} must be >= 0"
            )
        now = time.time()
        with self._lock:
            self._ttft.observe(ttft_s)
            self._tokens_per_s.observe(tokens_per_s)
            self._probe = dataclasses.replace(
                self._probe,
                runs_total=self._probe.runs_total + 1,
                in_progress_since=None,
                last_success_at=now,
                last_ttft_s=ttft_s,
                last_tokens_per_s=tokens_per_s,
            )

    def probe_failed(self, reason: ProbeFailureReason, detail: str | None = None) -> None:
        """Record one failed probe generation; ``detail`` is shown in the API, never a label."""
        if reason not in PROBE_FAILURE_REASONS:
            raise ValueError(
                f"probe_failed: reason={reason!r}, expected one of {PROBE_FAILURE_REASONS}"
            )
        with self._lock:
            self._failures[reason] += 1
            self._probe = dataclasses.replace(
                self._probe,
                runs_total=self._probe.runs_total + 1,
                failures_total=self._probe.failures_total + 1,
                in_progress_since=None,
                last_failure_at=time.time(),
                last_failure_reason=reason,
                last_failure_detail=detail,
            )

    def probe_status(self) -> ProbeStatus:
        with self._lock:
            return self._probe

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def _probe_families(self) -> Iterator[Metric]:
        with self._lock:
            probe = self._probe
            failures = dict(self._failures)
            ttft = (self._ttft.buckets(), self._ttft.sum)
            tokens = (self._tokens_per_s.buckets(), self._tokens_per_s.sum)
        model = [self.model]
        for name, doc, (buckets, total) in (
            (
                "petals_probe_time_to_first_token_seconds",
                "Seconds from sending a probe prompt to its first generated token.",
                ttft,
            ),
            (
                "petals_probe_tokens_per_second",
                "Tokens per second a probe generation reached after its first token.",
                tokens,
            ),
        ):
            histogram = HistogramMetricFamily(name, doc, labels=["model"])
            histogram.add_metric(model, buckets=buckets, sum_value=total)
            yield histogram
        runs = CounterMetricFamily(
            "petals_probe_runs", "Probe generations attempted, successful or not.", labels=["model"]
        )
        runs.add_metric(model, probe.runs_total)
        yield runs
        failed = CounterMetricFamily(
            "petals_probe_failures",
            "Probe generations that failed, by reason (timeout, unavailable, error).",
            labels=["model", "reason"],
        )
        # Every reason exists from the start, so rate() sees the first failure as an increase.
        for reason, count in failures.items():
            failed.add_metric([self.model, reason], count)
        yield failed
        last = GaugeMetricFamily(
            "petals_probe_last_success_timestamp_seconds",
            "Unix time of the last successful probe generation (0: none yet).",
            labels=["model"],
        )
        last.add_metric(model, probe.last_success_at or 0)
        yield last
        running = GaugeMetricFamily(
            "petals_probe_in_progress_since_timestamp_seconds",
            "Unix time the probe generation under way began, loading the client included "
            "(0: none under way). A hang, even on the very first run, shows as its age.",
            labels=["model"],
        )
        running.add_metric(model, probe.in_progress_since or 0)
        yield running


class _ProbeCollector(Collector):
    def __init__(self, metrics: HealthMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return self._metrics._probe_families()
