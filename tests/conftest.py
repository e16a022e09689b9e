"""Shared fixtures: the tiny model and real private swarms on 127.0.0.1, owned and reaped here.

``local_swarm`` is one session-wide swarm (bootstrap + 2 trusted servers) that tests may read from
and generate through but must not stop. Tests that stop or add servers build their own with
``swarm_factory``. Every swarm's process groups are checked empty after it stops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swarm.localswarm import LocalSwarm
from swarm.process import group_members

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "swarm", "monitoring", "bot", "lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier, or `make test` (which runs tiers) would miss it."""
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(set(tiers)) != 1:
            raise pytest.UsageError(
                f"{item.nodeid} has tier markers {tiers or 'none'}; give it exactly one of {TIERS}"
            )


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny Llama, cached inside the clone (.cache/models) so CI builds it once per run."""
    from swarm.models.tiny import ensure_tiny_llama

    cache = Path(os.environ.get("PETALS_KIT_CACHE") or REPO / ".cache") / "models"
    return ensure_tiny_llama(cache)


def assert_reaped(swarm_pgids: list[int]) -> None:
    left = {pgid: group_members(pgid) for pgid in swarm_pgids}
    left = {pgid: pids for pgid, pids in left.items() if pids}
    assert not left, f"processes left behind after stop (pgid: pids): {left}"


SwarmFactory = Callable[..., LocalSwarm]


@pytest.fixture(scope="session")
def swarm_factory(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[SwarmFactory]:
    """Start a private swarm: ``swarm_factory(num_servers=2, replication=1, dht_prefix=...)``
    (``replication`` servers per block range); stopped at the end
    of the session (or earlier by the test, with ``swarm.stop()``)."""
    started: list[tuple[LocalSwarm, list[int]]] = []

    def make(num_servers: int = 2, replication: int = 1, **kwargs: object) -> LocalSwarm:
        workdir = tmp_path_factory.mktemp("swarm")
        swarm = LocalSwarm(model=str(tiny_model_dir), workdir=workdir, **kwargs)  # type: ignore[arg-type]
        entry: tuple[LocalSwarm, list[int]] = (swarm, [])
        started.append(entry)
        swarm.start(num_servers, replication=replication)
        entry[1].extend(p.pid for p in swarm.processes())
        return swarm

    yield make
    for swarm, pgids in started:
        pgids.extend(p.pid for p in swarm.processes())
        swarm.stop()
    assert_reaped([pgid for _, pgids in started for pgid in pgids])


@pytest.fixture(scope="session")
def local_swarm(swarm_factory: SwarmFactory) -> LocalSwarm:
    return swarm_factory(num_servers=2, dht_prefix="tiny")
