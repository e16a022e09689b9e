"""Petals command lines for the private swarm: every flag that keeps it private is there."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarm.errors import ConfigError, ModelError
from swarm.launch import (
    BlockRange,
    bootstrap_argv,
    model_num_blocks,
    parse_block_range,
    record_lifetime,
    server_argv,
)
from swarm.localswarm import split_blocks
from swarm.swarm_settings import SwarmSettings

pytestmark = pytest.mark.unit

BOOT = "/ip4/10.0.0.5/tcp/31337/p2p/QmYqpnb37uQgZZDmXyBdv1UVUZ221oupeLpnagyL1DxtYA"


def test_server_argv_is_private():
    settings = SwarmSettings.load(model="/m/tiny", dht_prefix="tiny", initial_peers=[BOOT])
    argv = server_argv(
        settings, blocks=BlockRange(0, 4), identity_path=Path("/k/s1.id"), throughput=7.5
    )
    joined = " ".join(argv)
    assert argv[0] == "/m/tiny"
    assert f"--initial_peers {BOOT}" in joined
    assert "--dht_prefix tiny" in joined and "--block_indices 0:4" in joined
    for flag in ("--skip_reachability_check", "--no_auto_relay"):
        assert flag in argv
    assert "--throughput 7.5" in joined  # a number: no internet speed test
    assert "petals.dev" not in joined


def test_server_argv_refuses_without_peers():
    settings = SwarmSettings.load(model="/m/tiny")
    with pytest.raises(ConfigError, match="no bootstrap peers"):
        server_argv(settings, blocks=BlockRange(0, 1), identity_path=Path("k"), throughput=1)


def test_bootstrap_argv():
    argv = bootstrap_argv(identity_path=Path("b.id"), host_maddrs=["/ip4/0.0.0.0/tcp/31337"])
    assert argv == [
        "--identity_path",
        "b.id",
        "--no_relay",
        "--host_maddrs",
        "/ip4/0.0.0.0/tcp/31337",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [("0:8", BlockRange(0, 8)), ("3:4", BlockRange(3, 4)), (" 2:5", BlockRange(2, 5))],
)
def test_block_ranges(text, expected):
    assert parse_block_range(text, 8) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("6:12", "outside the model: it has 8 blocks"),
        ("4:4", "START < END"),
        ("a:b", "START:END"),
        ("5", "START:END"),
    ],
)
def test_bad_block_ranges(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_block_range(text, 8)


def test_model_num_blocks_from_local_dir(tmp_path):
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 8}')
    assert model_num_blocks(str(tmp_path)) == 8
    with pytest.raises(ModelError, match="does not exist"):
        model_num_blocks(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        model_num_blocks(str(empty))


@pytest.mark.parametrize("blocks, servers", [(8, 2), (8, 3), (80, 4), (5, 5)])
def test_split_blocks_covers_each_block_once(blocks, servers):
    ranges = split_blocks(blocks, servers)
    assert [b for r in ranges for b in r] == list(range(blocks))
    assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1


def test_record_lifetime_follows_petals_expiration_formula():
    from hivemind.utils.timed_storage import MAX_DHT_TIME_DISCREPANCY_SECONDS

    assert record_lifetime(60.0) == 120.0  # petals: max(2 * update_period, discrepancy)
    assert record_lifetime(0.5) == MAX_DHT_TIME_DISCREPANCY_SECONDS
