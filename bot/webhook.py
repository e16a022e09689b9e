"""The bot's small HTTP server: Alertmanager's webhook, /metrics for Prometheus and /healthz.

``POST /alertmanager`` validates the payload and hands it to a callback that posts to the admin
channel; a failure there answers 503 so Alertmanager retries the notification.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from bot.alerttext import AlertmanagerPayload
from bot.metrics import BotMetrics

log = logging.getLogger(__name__)

AlertHandler = Callable[[AlertmanagerPayload], Awaitable[None]]
HealthProbe = Callable[[], dict[str, Any]]
MAX_BODY = 1_000_000


def create_http_app(
    metrics: BotMetrics,
    on_alerts: AlertHandler,
    health: HealthProbe,
    *,
    bearer_token: str | None = None,
) -> web.Application:
    """``bearer_token``: when set, /alertmanager requires ``Authorization: Bearer <token>``."""
    expected = f"Bearer {bearer_token}" if bearer_token else None

    async def alertmanager(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        if expected is not None and not hmac.compare_digest(given, expected):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            data = json.loads(await request.read())
            payload = AlertmanagerPayload.model_validate(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return web.json_response({"error": f"body is not JSON: {exc}"}, status=400)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return web.json_response(
                {"error": f"not an Alertmanager v4 payload: {where}: {first['msg']}"}, status=400
            )
        for alert in payload.alerts:
            metrics.alerts.labels(alert.status).inc()
        try:
            await on_alerts(payload)
        except Exception as exc:
            log.warning("could not post %d alert(s) to Discord: %s", len(payload.alerts), exc)
            return web.json_response({"error": "could not post to Discord; retry"}, status=503)
        return web.json_response({"ok": True, "alerts": len(payload.alerts)})

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(request: web.Request) -> web.Response:
        state = health()
        return web.json_response(state, status=200 if state.get("ready") else 503)

    app = web.Application(client_max_size=MAX_BODY)
    app.add_routes(
        [
            web.post("/alertmanager", alertmanager),
            web.get("/metrics", metrics_page),
            web.get("/healthz", healthz),
        ]
    )
    return app


class HttpServer:
    """Runs the app on host:port (port 0 picks a free one; ``port`` tells which)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info(
            "webhook and metrics on http://%s:%d (/alertmanager, /metrics)", self.host, self.port
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
