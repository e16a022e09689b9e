"""The pure parts of failover and capacity: block naming, reservation sizing, quarantine."""

from __future__ import annotations

import pytest

from client.failover import (
    PeerQuarantine,
    RecoveryMetrics,
    format_blocks,
    is_capacity_error,
    missing_blocks_error,
    round_up_reservation,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("blocks", "text"),
    [([4, 5, 6, 7], "4-7"), ([0], "0"), ([7, 1, 2, 9], "1-2, 7, 9"), ([], "")],
)
def test_format_blocks(blocks: list[int], text: str) -> None:
    assert format_blocks(blocks) == text


@pytest.mark.parametrize(
    ("tokens", "quantum", "limit", "reserved"),
    [
        (1, 256, 4096, 256),
        (256, 256, 4096, 256),
        (257, 256, 4096, 512),
        (5000, 256, 4096, 4096),
        (0, 256, 100, 100),
    ],
)
def test_round_up_reservation(tokens: int, quantum: int, limit: int, reserved: int) -> None:
    assert round_up_reservation(tokens, quantum, limit) == reserved


def test_quarantine_readmits_only_after_a_newer_announcement() -> None:
    quarantine = PeerQuarantine()
    assert quarantine.add("QmA", "0:4", 100.0)
    assert not quarantine.add("QmA", "0:4", 100.0)
    quarantine.add("QmB", "4:8", None)  # no record seen when it failed
    assert quarantine.readmit({"QmA": 100.0}) == []  # the dead record lingers: still out
    assert quarantine.readmit({}) == []
    assert sorted(quarantine.readmit({"QmA": 130.0, "QmB": 5.0})) == ["QmA", "QmB"]
    assert not quarantine.peers


def test_capacity_errors_are_told_apart_from_failures() -> None:
    assert is_capacity_error(RuntimeError("AllocationFailed: Could not allocate 4096 bytes"))
    assert not is_capacity_error(TimeoutError())


def test_missing_blocks_error_names_the_blocks_and_the_quarantined() -> None:
    error = missing_blocks_error(
        RuntimeError("No servers holding blocks [4, 5, 6, 7] are online. You can check"),
        ["QmAAAAAAAAAA123456"],
    )
    assert str(error) == (
        "no trusted server is online for blocks 4-7 (failed and quarantined: ...123456)"
    )


def test_metrics_samples() -> None:
    metrics = RecoveryMetrics()
    metrics.recovered(1.5)
    metrics.capacity_wait(+1)
    samples = metrics.samples()
    assert samples["petals_client_recoveries_total"] == 1
    assert samples["petals_client_recovery_seconds_sum"] == 1.5
    assert samples["petals_client_requests_waiting_for_capacity"] == 1
    metrics.capacity_wait(-1)
    assert metrics.samples()["petals_client_capacity_waits_total"] == 1
