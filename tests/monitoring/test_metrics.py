"""Metrics read straight from the service's own registry, and linted as Prometheus sees them."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import TTFT_BUCKETS_S, HealthMetrics
from monitoring.refresher import Refresher
from monitoring.snapshot import BootstrapRecord
from tests.monitoring.procs import require_binary
from tests.monitoring.synthetic import MODEL, MutableFetch, peer, server, snapshot

pytestmark = pytest.mark.monitoring

M = {"model": MODEL}


def samples(metrics: HealthMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name``: sorted labels (without model) -> value."""
    found = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model"))
                found[labels] = sample.value
    return found


def per_peer(metrics: HealthMetrics, name: str) -> dict[str, float]:
    return {dict(labels)["peer_id"]: value for labels, value in samples(metrics, name).items()}


@pytest.fixture
def fetch() -> MutableFetch:
    return MutableFetch(
        snapshot(
            server("a", 0, 5, throughput=400.0, cache_tokens_left=1000, using_relay=True),
            server("b", 3, 8, network_rps=None),
            server("c", 0, 8, state="joining"),
            server("x", 0, 8, trusted=False, public_name="intruder"),
            num_blocks=8,
            replication_target=2,
            trusted=(peer("a"), peer("b"), peer("c"), peer("gone")),
        )
    )


@pytest.fixture
def refresher(fetch: MutableFetch) -> Refresher:
    refresher = Refresher(fetch, interval_s=60)
    assert refresher.refresh_once()
    return refresher


@pytest.fixture
def metrics(refresher: Refresher) -> HealthMetrics:
    return HealthMetrics(MODEL, refresher.status, version="9.9.9")


def test_swarm_gauges(metrics: HealthMetrics):
    value = metrics.registry.get_sample_value

    assert value("petals_model_blocks", M) == 8
    assert value("petals_replication_target", M) == 2
    assert value("petals_blocks_covered_ratio", M) == 1.0
    assert value("petals_block_min_replication", M) == 1
    assert value("petals_untrusted_servers", M) == 1
    assert {dict(k)["block"]: v for k, v in samples(metrics, "petals_block_servers").items()} == {
        "0": 1, "1": 1, "2": 1, "3": 2, "4": 2, "5": 1, "6": 1, "7": 1,
    }  # fmt: skip
    assert {dict(k)["state"]: v for k, v in samples(metrics, "petals_servers").items()} == {
        "joining": 1, "online": 2, "offline": 1, "unreachable": 0,
    }  # fmt: skip
    assert value("petals_health_info", {"version": "9.9.9"}) == 1


def test_per_server_series(metrics: HealthMetrics):
    assert per_peer(metrics, "petals_server_up") == {
        peer("a"): 1, peer("b"): 1, peer("c"): 0, peer("x"): 1,
    }  # fmt: skip
    assert per_peer(metrics, "petals_server_start_block")[peer("b")] == 3
    assert per_peer(metrics, "petals_server_end_block")[peer("b")] == 8
    assert per_peer(metrics, "petals_server_throughput_rps")[peer("a")] == 400
    assert per_peer(metrics, "petals_server_inference_rps")[peer("a")] == 310
    assert per_peer(metrics, "petals_server_forward_rps")[peer("a")] == 2100
    # Petals announces K-or-V slots summed over the server's blocks: 1000 / (2 x 5 blocks).
    assert per_peer(metrics, "petals_server_cache_tokens_left")[peer("a")] == 100
    # Unknown stays absent instead of reading as 0.
    assert peer("b") not in per_peer(metrics, "petals_server_network_rps")
    assert per_peer(metrics, "petals_server_network_rps")[peer("a")] == 950

    info = {dict(k)["peer_id"]: dict(k) for k in samples(metrics, "petals_server_info")}
    assert info[peer("a")] == {
        "peer_id": peer("a"),
        "public_name": "a",
        "version": "2.2.0.post1",
        "torch_dtype": "bfloat16",
        "quant_type": "nf4",
        "relay": "true",
        "trusted": "true",
    }
    assert info[peer("x")]["trusted"] == "false"
    assert info[peer("x")]["public_name"] == "intruder"


def test_every_configured_trusted_peer_has_an_up_series(metrics: HealthMetrics):
    assert per_peer(metrics, "petals_trusted_server_up") == {
        peer("a"): 1, peer("b"): 1, peer("c"): 0, peer("gone"): 0,
    }  # fmt: skip


def test_series_of_a_departed_server_disappear(
    metrics: HealthMetrics, fetch: MutableFetch, refresher: Refresher
):
    assert peer("b") in per_peer(metrics, "petals_server_up")
    fetch.set(snapshot(server("a", 0, 8), num_blocks=8, trusted=(peer("a"), peer("b"))))
    assert refresher.refresh_once()

    for name in (
        "petals_server_up",
        "petals_server_start_block",
        "petals_server_throughput_rps",
        "petals_server_cache_tokens_left",
    ):
        assert per_peer(metrics, name) == {
            peer("a"): pytest.approx(per_peer(metrics, name)[peer("a")])
        }
    assert peer("b") not in {dict(k)["peer_id"] for k in samples(metrics, "petals_server_info")}
    # Still configured as trusted: it stays visible as down.
    assert per_peer(metrics, "petals_trusted_server_up") == {peer("a"): 1, peer("b"): 0}
    assert metrics.registry.get_sample_value("petals_untrusted_servers", M) == 0


def test_collector_series_follow_the_refresher(
    metrics: HealthMetrics, fetch: MutableFetch, refresher: Refresher
):
    value = metrics.registry.get_sample_value
    last = refresher.status().last_success_at

    assert value("petals_collector_up", M) == 1
    assert value("petals_collector_refresh_errors_total", M) == 0
    assert value("petals_collector_last_refresh_timestamp_seconds", M) == last
    duration = value("petals_collector_refresh_duration_seconds", M)
    assert duration is not None and duration >= 0

    fetch.fail(ConnectionError("no bootstrap peer answers"))
    refresher.refresh_once()
    refresher.refresh_once()

    assert value("petals_collector_up", M) == 0
    assert value("petals_collector_refresh_errors_total", M) == 2
    assert value("petals_collector_last_refresh_timestamp_seconds", M) == last
    assert value("petals_blocks_covered_ratio", M) == 1.0  # the last good snapshot stays


def test_dht_peers_and_each_bootstrap_are_series_while_reads_succeed():
    boot_a, boot_b = peer("boot-a"), peer("boot-b")
    bootstraps = (
        BootstrapRecord(address=f"/ip4/10.0.0.1/tcp/31337/p2p/{boot_a}", peer_id=boot_a,
                        reachable=True, rtt_s=0.004),
        BootstrapRecord(address=f"/ip4/10.0.0.2/tcp/31337/p2p/{boot_b}", peer_id=boot_b,
                        reachable=False),
    )  # fmt: skip
    fetch = MutableFetch(
        snapshot(server("a", 0, 8, rtt_s=0.002)).model_copy(
            update={"bootstraps": bootstraps, "dht_peers": 3}
        )
    )
    refresher = Refresher(fetch, interval_s=60)
    assert refresher.refresh_once()
    metrics = HealthMetrics(MODEL, refresher.status)

    assert metrics.registry.get_sample_value("petals_dht_peers", M) == 3
    assert per_peer(metrics, "petals_bootstrap_up") == {boot_a: 1, boot_b: 0}
    assert per_peer(metrics, "petals_bootstrap_rtt_seconds") == {boot_a: 0.004}
    assert per_peer(metrics, "petals_server_ping_rtt_seconds") == {peer("a"): 0.002}

    # A failed read knows nothing about the DHT: no stale "bootstrap up" while collector_up is 0.
    fetch.fail(ConnectionError("cut off"))
    assert not refresher.refresh_once()
    assert per_peer(metrics, "petals_bootstrap_up") == {}
    assert metrics.registry.get_sample_value("petals_dht_peers", M) is None
    assert metrics.registry.get_sample_value("petals_collector_up", M) == 0


def test_before_the_first_read_only_collector_series_exist():
    metrics = HealthMetrics(MODEL, Refresher(MutableFetch(), interval_s=60).status)
    names = {s.name for family in metrics.registry.collect() for s in family.samples}

    assert metrics.registry.get_sample_value("petals_collector_up", M) == 0
    assert "petals_blocks_covered_ratio" not in names
    assert "petals_collector_last_refresh_timestamp_seconds" not in names
    assert metrics.registry.get_sample_value("petals_probe_runs_total", M) == 0


def test_probe_observations(metrics: HealthMetrics):
    value = metrics.registry.get_sample_value
    metrics.observe_probe(ttft_s=0.8, tokens_per_s=14.0)
    metrics.observe_probe(ttft_s=12.0, tokens_per_s=1.4)
    metrics.probe_failed("timeout", "no token after 60 s")

    assert value("petals_probe_runs_total", M) == 3
    assert value("petals_probe_failures_total", {**M, "reason": "timeout"}) == 1
    assert value("petals_probe_failures_total", {**M, "reason": "error"}) == 0
    assert value("petals_probe_time_to_first_token_seconds_count", M) == 2
    assert value("petals_probe_time_to_first_token_seconds_sum", M) == pytest.approx(12.8)
    assert value("petals_probe_time_to_first_token_seconds_bucket", {**M, "le": "1.0"}) == 1
    assert value("petals_probe_time_to_first_token_seconds_bucket", {**M, "le": "10.0"}) == 1
    assert value("petals_probe_time_to_first_token_seconds_bucket", {**M, "le": "15.0"}) == 2
    assert value("petals_probe_time_to_first_token_seconds_bucket", {**M, "le": "+Inf"}) == 2
    assert value("petals_probe_tokens_per_second_bucket", {**M, "le": "1.5"}) == 1
    assert value("petals_probe_tokens_per_second_bucket", {**M, "le": "15.0"}) == 2
    assert value("petals_probe_last_success_timestamp_seconds", M) == (
        metrics.probe_status().last_success_at
    )
    status = metrics.probe_status()
    assert (status.runs_total, status.failures_total) == (3, 1)
    assert status.last_failure_detail == "no token after 60 s"


def test_probe_buckets_span_what_students_saw():
    assert TTFT_BUCKETS_S[0] == 0.05 and TTFT_BUCKETS_S[-1] == 60
    assert 10 in TTFT_BUCKETS_S  # the PetalsProbeSlowFirstToken threshold is a bucket bound


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.observe_probe(-1, 3), "must be >= 0"),
        (lambda m: m.observe_probe(float("nan"), 3), "must be >= 0"),
        (lambda m: m.probe_failed("boom"), "expected one of"),
    ],
)
def test_probe_refuses_bad_input(metrics: HealthMetrics, call, message):
    with pytest.raises(ValueError, match=message):
        call(metrics)
    assert metrics.registry.get_sample_value("petals_probe_runs_total", M) == 0


def test_metrics_of_separate_instances_do_not_mix(refresher: Refresher):
    one = HealthMetrics(MODEL, refresher.status)
    two = HealthMetrics(MODEL, refresher.status)
    one.observe_probe(1, 1)

    assert one.registry.get_sample_value("petals_probe_runs_total", M) == 1
    assert two.registry.get_sample_value("petals_probe_runs_total", M) == 0


def test_served_exposition_passes_promtool(start_service, fetch: MutableFetch):
    promtool = require_binary("promtool")
    service = start_service(fetch())
    service.metrics.observe_probe(1.5, 9.0)
    service.metrics.probe_failed("unavailable")

    response = httpx.get(f"{service.url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=response.content, capture_output=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert lint.stdout.decode().strip() == ""  # no lint findings at all

    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert all(f.documentation for f in families.values()), "every family has HELP text"
    assert families["petals_probe_time_to_first_token_seconds"].type == "histogram"
    assert families["petals_probe_failures"].type == "counter"
    assert not [n for n in families if n.endswith("_created")]


def test_a_probe_under_way_shows_when_it_began_until_it_ends(metrics: HealthMetrics):
    name = "petals_probe_in_progress_since_timestamp_seconds"
    value = metrics.registry.get_sample_value
    assert value(name, M) == 0

    metrics.probe_started()  # e.g. the very first run, stuck loading the client
    began = metrics.probe_status().in_progress_since
    assert began is not None and value(name, M) == began

    metrics.probe_failed("timeout")
    assert value(name, M) == 0
    metrics.probe_started()
    metrics.observe_probe(0.5, 10)
    assert value(name, M) == 0
    metrics.probe_started()
    metrics.probe_abandoned()
    assert value(name, M) == 0
