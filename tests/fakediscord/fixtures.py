"""Pytest fixtures for the fake Discord; a conftest imports the ones it wants:

from tests.fakediscord.fixtures import fake_discord  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.fakediscord.client_patch import pointed_at
from tests.fakediscord.server import FakeDiscord


@pytest_asyncio.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A started FakeDiscord on 127.0.0.1 with discord.py pointed at it for the test."""
    async with FakeDiscord() as fake:
        with pointed_at(fake):
            yield fake
