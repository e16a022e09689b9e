"""Pure parts of the gateway: hashed tokens file, rate and concurrency limits, settings."""

from __future__ import annotations

import os
import stat

import pytest

from client.gateway.ratelimit import ConcurrencyLimiter, RateLimiter
from client.gateway.settings import GatewaySettings
from client.gateway.tokens import (
    TokenStore,
    add_token,
    hash_token,
    read_tokens_file,
    remove_token,
)
from swarm.errors import ConfigError

pytestmark = pytest.mark.unit


def test_tokens_are_stored_hashed_in_a_private_file(tmp_path):
    path = tmp_path / "tokens"
    token = add_token(path, "bot")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and hash_token(token) in text
    store = TokenStore.load(path, [])
    assert store.verify(token) == "bot"
    assert store.verify(token + "x") is None
    with pytest.raises(ConfigError, match="exists"):
        add_token(path, "bot")
    second = add_token(path, "alice")
    assert TokenStore.load(path, []).verify(second) == "alice"
    remove_token(path, "bot")
    assert list(read_tokens_file(path)) == ["alice"]


def test_a_readable_tokens_file_is_refused(tmp_path):
    path = tmp_path / "tokens"
    add_token(path, "bot")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_tokens_file(path)


def test_hashes_from_the_environment(monkeypatch):
    token = "pk-test-token"
    monkeypatch.setenv("PETALS_GATEWAY_TOKEN_HASHES", f"ci:{hash_token(token)}")
    settings = GatewaySettings.load()
    assert TokenStore.load(None, settings.token_hashes).verify(token) == "ci"
    monkeypatch.setenv("PETALS_GATEWAY_TOKEN_HASHES", "ci:plaintext")
    with pytest.raises(ConfigError, match="token_hashes"):
        GatewaySettings.load()


def test_rate_limit_allows_a_burst_then_the_sustained_rate():
    now = [0.0]
    limiter = RateLimiter(rate_per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0  # per token
    now[0] += 1.0
    assert limiter.take("a") == 0.0


def test_concurrency_limit_per_token():
    limiter = ConcurrencyLimiter(limit=2)
    assert limiter.acquire("a") and limiter.acquire("a")
    assert not limiter.acquire("a")
    assert limiter.acquire("b")
    limiter.release("a")
    assert limiter.acquire("a")


def test_default_answer_length_must_fit_the_limit():
    with pytest.raises(ConfigError, match="default_max_new_tokens"):
        GatewaySettings.load(default_max_new_tokens=600, max_new_tokens_limit=500)


def test_a_client_refuses_settings_without_private_peers_or_trusted_servers():
    from client import SwarmClient
    from swarm.swarm_settings import SwarmSettings

    peer = "/ip4/127.0.0.1/tcp/4000/p2p/QmUSeQeQgRHMxLUDYjeuFUFxAKGDeJcwBKVWwjaE4FKJhb"
    with pytest.raises(ConfigError, match="no bootstrap peers"):
        SwarmClient(SwarmSettings.load(model="m", trusted_servers=[]))
    with pytest.raises(ConfigError, match="no trusted servers"):
        SwarmClient(SwarmSettings.load(model="m", initial_peers=[peer]))
