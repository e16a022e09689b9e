"""Fixtures for the fake Discord tests (defined in fixtures.py so other suites can reuse them)."""

from tests.fakediscord.fixtures import fake_discord  # noqa: F401
