"""SwarmSettings: TOML, env and flags from one definition; never the public swarm."""

from __future__ import annotations

import argparse

import pytest

from swarm.errors import ConfigError
from swarm.settings_base import add_arguments
from swarm.swarm_settings import SwarmSettings, derive_dht_prefix

pytestmark = pytest.mark.unit

PEER_A = "Qmf5QCDc5dkaUBsKXoDXzTpuxjFSwSMcYpAd9TWJhkViN2"
PEER_B = "QmYqpnb37uQgZZDmXyBdv1UVUZ221oupeLpnagyL1DxtYA"
BOOT = f"/ip4/10.0.0.5/tcp/31337/p2p/{PEER_B}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(__import__("os").environ):
        if name.startswith("PETALS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray ./swarm.toml


def test_defaults_have_no_peers_and_refuse_to_run():
    settings = SwarmSettings.load()
    assert settings.initial_peers == []
    with pytest.raises(ConfigError, match=r"no bootstrap peers.*never falls back"):
        settings.require_initial_peers()
    with pytest.raises(ConfigError, match="no trusted servers"):
        settings.require_trusted_servers()


def test_toml_env_and_flag_precedence(tmp_path, monkeypatch):
    config = tmp_path / "swarm.toml"
    config.write_text(
        f'[swarm]\nmodel = "/models/tiny"\ndht_prefix = "from-toml"\n'
        f'initial_peers = ["{BOOT}"]\ntrusted_servers = ["{PEER_A}"]\n'
        "[health]\nport = 1\n"
    )
    settings = SwarmSettings.load(config)
    assert settings.model == "/models/tiny"
    assert settings.dht_prefix == "from-toml"
    assert settings.initial_peers == [BOOT]
    monkeypatch.setenv("PETALS_DHT_PREFIX", "from-env")
    monkeypatch.setenv("PETALS_TRUSTED_SERVERS", f"{PEER_A}, {PEER_B}")
    settings = SwarmSettings.load(config)
    assert settings.dht_prefix == "from-env"
    assert settings.trusted_servers == [PEER_A, PEER_B]
    assert SwarmSettings.load(config, dht_prefix="from-flag").dht_prefix == "from-flag"


def test_config_file_found_through_env(tmp_path, monkeypatch):
    config = tmp_path / "elsewhere.toml"
    config.write_text('[swarm]\ndht_prefix = "x1"\n')
    monkeypatch.setenv("PETALS_CONFIG", str(config))
    assert SwarmSettings.load().dht_prefix == "x1"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"initial_peers": "/ip4/1.2.3.4/tcp/31337"}, "no /p2p/<PeerID> part"),
        ({"initial_peers": "bootstrap1.petals.dev:31337"}, "not a TCP multiaddr"),
        (
            {"initial_peers": "/dns6/bootstrap1.petals.dev/tcp/31337/p2p/" + PEER_A},
            "PUBLIC Petals swarm",
        ),
        ({"dht_prefix": "llama.2"}, r"dht_prefix = 'llama.2': must be letters"),
        ({"torch_dtype": "int3"}, "torch_dtype = 'int3'.*'bfloat16'"),
        ({"quant_type": "fp4"}, "quant_type = 'fp4'"),
        ({"request_timeout": "-1"}, "request_timeout"),
        ({"trusted_servers": "not-a-peer"}, "not a PeerID"),
        ({"modle": "x"}, "unknown setting 'modle'.*known settings: .*model"),
    ],
)
def test_bad_values_name_field_value_and_accepted(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SwarmSettings.load(**kwargs)


def test_bad_toml_is_one_clear_error(tmp_path):
    bad = tmp_path / "swarm.toml"
    bad.write_text("[swarm\nmodel=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        SwarmSettings.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        SwarmSettings.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "model, prefix",
    [
        ("petals-team/StableBeluga2", "StableBeluga2"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "Meta-Llama-3-1-70B-Instruct"),
        ("/srv/models/tiny-llama-abc/", "tiny-llama-abc"),
    ],
)
def test_derived_prefix_has_no_uid_delimiter(model, prefix):
    assert derive_dht_prefix(model) == prefix
    assert SwarmSettings.load(model=model).effective_dht_prefix == prefix


def test_flags_come_from_the_same_definition():
    parser = argparse.ArgumentParser()
    add_arguments(parser, SwarmSettings, ["model", "initial_peers", "request_timeout"])
    help_text = parser.format_help()
    assert "Hugging Face model name or local model directory" in help_text
    assert "default: petals-team/StableBeluga2; env PETALS_MODEL" in help_text
    args = parser.parse_args(["--initial-peers", BOOT, "--request-timeout", "12"])
    settings = SwarmSettings.from_args(args)
    assert settings.initial_peers == [BOOT]
    assert settings.request_timeout == 12.0
    assert settings.model == "petals-team/StableBeluga2"  # not given: default, not None
