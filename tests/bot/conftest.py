"""Fixtures for the bot's tests: the fake Discord (from tests/fakediscord) and one engine on the
shared loopback swarm, started once per session; bots use it through RecordingEngine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.engine import ClientEngine
from swarm.localswarm import LocalSwarm
from tests.fakediscord.fixtures import fake_discord  # noqa: F401

STOP_SEQUENCES = ("### User:", "### System:", "### Assistant:")


@pytest.fixture(scope="session")
def swarm_engine(local_swarm: LocalSwarm) -> Iterator[ClientEngine]:
    engine = ClientEngine(local_swarm.settings(), stop_sequences=STOP_SEQUENCES)
    engine.open()
    yield engine
    engine.shutdown()
