"""Fixtures for the monitoring tests: the health service under a real uvicorn, steered by a
synthetic fetch, and the repository's monitoring files."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitoring.app import create_app
from monitoring.metrics import HealthMetrics
from monitoring.refresher import Refresher
from monitoring.settings import HealthSettings
from monitoring.snapshot import SwarmSnapshot
from tests.monitoring.procs import serve_in_thread, wait_until
from tests.monitoring.synthetic import MutableFetch

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
ARTIFACTS = REPO / "artifacts" / "monitoring"


@dataclasses.dataclass
class Service:
    url: str
    fetch: MutableFetch
    refresher: Refresher
    metrics: HealthMetrics
    settings: HealthSettings

    def wait_for(self, snapshot: SwarmSnapshot) -> None:
        """Wait until the refresher holds ``snapshot``."""
        wait_until(
            lambda: self.refresher.status().snapshot == snapshot,
            timeout=10,
            what="the refresher to pick up the new snapshot",
        )


StartService = Callable[..., Service]


@pytest.fixture
def start_service() -> Iterator[StartService]:
    """Start health services (real uvicorn on a free 127.0.0.1 port); all stop at teardown."""
    with contextlib.ExitStack() as stack:

        def start(
            initial: SwarmSnapshot | None,
            *,
            wrap: Callable[[Any], Any] | None = None,
            **settings: Any,
        ) -> Service:
            service = stack.enter_context(_service(initial, wrap=wrap, **settings))
            return service

        yield start


@contextlib.contextmanager
def _service(
    initial: SwarmSnapshot | None, *, wrap: Callable[[Any], Any] | None = None, **overrides: Any
) -> Iterator[Service]:
    settings = HealthSettings(**{"refresh_interval_s": 0.2, **overrides})
    fetch = MutableFetch(initial)
    refresher = Refresher(
        fetch, settings.refresh_interval_s, history_points=settings.history_points
    )
    metrics = HealthMetrics(initial.model if initial else "test-model", refresher.status)
    app = create_app(settings, refresher, metrics)
    with serve_in_thread(wrap(app) if wrap else app) as url:
        service = Service(url, fetch, refresher, metrics, settings)
        if initial is not None:
            service.wait_for(initial)
        yield service
    assert not refresher.running, "the app's lifespan must stop the refresher"
