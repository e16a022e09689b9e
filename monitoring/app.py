"""The health service: /metrics for Prometheus, /api/v1/state, /healthz and the status page.

Every request formats the refresher's last snapshot; none reads the DHT. The app's lifespan starts
and stops the refresher and any other background workers (the probe, the collector's DHT).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import BaseModel

from monitoring.metrics import HealthMetrics, kit_version
from monitoring.refresher import Fetch, Refresher
from monitoring.settings import HealthSettings
from monitoring.state import (
    NotReady,
    SwarmState,
    history_state,
    probe_state,
    refresh_state,
    swarm_state,
)
from monitoring.web import render


class Worker(Protocol):
    """Something that runs alongside the service: started with it, stopped (blocking) with it."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Health(BaseModel):
    """Response of GET /healthz."""

    status: str
    reason: str | None = None
    age_s: float | None = None


def current_state(
    settings: HealthSettings, refresher: Refresher, metrics: HealthMetrics
) -> SwarmState | NotReady:
    status = refresher.status()
    refresh = refresh_state(status, settings.stale_after_intervals, time.time())
    probe = metrics.probe_status()
    if status.snapshot is None:
        return NotReady(
            detail="no successful read of the swarm's DHT yet",
            refresh=refresh,
            probe=probe_state(probe),
            history=history_state(status.history),
        )
    return swarm_state(status.snapshot, refresh, probe, status.history)


def health(settings: HealthSettings, refresher: Refresher) -> tuple[int, Health]:
    status = refresher.status()
    now = time.time()
    age = status.age_s(now)
    error = f" (last error: {status.last_error})" if status.last_error else ""
    if age is None:
        return 503, Health(status="unavailable", reason=f"no successful DHT read yet{error}")
    if not status.is_fresh(settings.stale_after_intervals, now):
        limit = settings.stale_after_intervals * status.interval_s
        reason = f"last successful DHT read {age:.0f} s ago, older than {limit:g} s{error}"
        return 503, Health(status="stale", reason=reason, age_s=age)
    return 200, Health(status="ok", age_s=age)


def create_app(
    settings: HealthSettings,
    refresher: Refresher,
    metrics: HealthMetrics,
    *,
    workers: Sequence[Worker] = (),
) -> FastAPI:
    """The service around an existing refresher. The app's lifespan starts the refresher, then
    ``workers``; at shutdown it stops the refresher first (no read may use what a worker closes),
    then the workers in reverse order."""

    def stop_all() -> None:
        refresher.stop()  # may wait for a DHT read in progress
        for worker in reversed(workers):
            worker.stop()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        refresher.start()
        try:
            for worker in workers:
                worker.start()
            yield
        finally:
            await run_in_threadpool(stop_all)

    version = kit_version()
    app = FastAPI(
        title="Petals swarm health",
        version=version,
        description="Coverage, replication and speed of a private Petals swarm.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.refresher = refresher
    app.state.metrics = metrics
    refresh_ms = round(settings.page_refresh_s * 1000)

    @app.get("/metrics", response_class=Response, summary="Prometheus exposition")
    def get_metrics() -> Response:
        # The classic 0.0.4 text format: what Prometheus 2.x (Debian 12 ships 2.42) expects.
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    @app.get(
        "/api/v1/state",
        response_model=SwarmState,
        responses={503: {"model": NotReady, "description": "no snapshot yet"}},
        summary="Per block, the servers announcing it; coverage; every server",
    )
    def get_state() -> SwarmState | JSONResponse:
        state = current_state(settings, refresher, metrics)
        if isinstance(state, NotReady):
            return JSONResponse(state.model_dump(mode="json"), status_code=503)
        return state

    @app.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "no recent successful DHT read"}},
        summary="200 while the last DHT read is recent",
    )
    def get_healthz() -> JSONResponse:
        code, body = health(settings, refresher)
        return JSONResponse(body.model_dump(mode="json"), status_code=code)

    @app.get("/", response_class=HTMLResponse, summary="Status page")
    def get_page() -> HTMLResponse:
        state = current_state(settings, refresher, metrics)
        return HTMLResponse(render.page(state, version=version, refresh_ms=refresh_ms))

    @app.get("/partials/status", response_class=HTMLResponse, include_in_schema=False)
    def get_status_fragment() -> HTMLResponse:
        state = current_state(settings, refresher, metrics)
        return HTMLResponse(render.status_fragment(state), headers={"Cache-Control": "no-store"})

    return app


def build_app(settings: HealthSettings, fetch: Fetch, model: str) -> FastAPI:
    """Refresher, metrics and app for a fetch function; the probe finds the metrics at
    ``app.state.metrics``."""
    refresher = Refresher(
        fetch, settings.refresh_interval_s, history_points=settings.history_points
    )
    metrics = HealthMetrics(model, refresher.status)
    return create_app(settings, refresher, metrics)


def serve(app: FastAPI, settings: HealthSettings) -> None:
    """Run the service in the foreground until interrupted."""
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
