"""``create_app(settings, client)``: the gateway's FastAPI app.

The lifespan starts the SwarmClient (joining the swarm) and closes it at shutdown when the app
made it; a client passed in is started if needed and left for its owner to close. Request
validation errors become 400s in the route family's error shape, naming field and limit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from client.gateway import openai_api, petals_api, webchat
from client.gateway.access import AccessMiddleware
from client.gateway.errors import APIError, render
from client.gateway.metrics import GatewayMetrics
from client.gateway.service import ClientGone, GatewayService
from client.gateway.settings import GatewaySettings
from client.gateway.tokens import TokenStore
from client.params import describe_errors
from client.recovery_metrics import register_recovery_metrics
from client.settings import ClientSettings
from client.swarm_client import SwarmClient
from swarm.errors import ConfigError
from swarm.swarm_settings import SwarmSettings

logger = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


class GatewayMiddleware:
    """Counts requests by route template and status, and refuses bodies over the size limit."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            error = APIError(413, f"request body over {limit} bytes (max_body_bytes)")
            await render(scope["path"], error)(scope, receive, send)
            self.metrics.requests.labels("other", "413").inc()
            return
        status = {"code": 500}
        received = {"bytes": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    raise _BodyTooLarge
            return message

        async def capturing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, capturing_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(label, str(status["code"])).inc()


def create_app(
    settings: GatewaySettings,
    client: SwarmClient | None = None,
    *,
    swarm: SwarmSettings | None = None,
    client_settings: ClientSettings | None = None,
) -> FastAPI:
    """The gateway app. Without ``client``, one is made from ``swarm`` (default: loaded from
    env/swarm.toml) and ``client_settings``, started and closed by the lifespan."""
    tokens = TokenStore.load(settings.tokens_file, settings.token_hashes)
    if not len(tokens) and not settings.allow_anonymous:
        raise ConfigError(
            "no bearer tokens: create one with `petalctl gateway token add NAME` and set "
            "tokens_file (flag --tokens-file, env PETALS_GATEWAY_TOKENS_FILE), or set "
            "allow_anonymous for a trusted local network"
        )
    owned = client is None
    if client is None:
        client = SwarmClient(swarm or SwarmSettings.load(), client_settings)
    metrics = GatewayMetrics()
    register_recovery_metrics(metrics.registry, client)  # failover counters (client/failover.py)
    service = GatewayService(settings, client, tokens, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not service.client.started:
            await service.client.astart()
        logger.info("gateway ready: model %s", service.model_id)
        try:
            yield
        finally:
            if owned:
                await service.client.aclose()

    app = FastAPI(
        title="petals-swarm-kit gateway",
        version="1",
        description="OpenAI-compatible and chat.petals.dev-compatible APIs for the private "
        "Petals swarm. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    app.include_router(openai_api.router)
    app.include_router(petals_api.router)
    app.include_router(webchat.router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", summary="liveness: the gateway is up and its client joined the swarm")
    async def healthz() -> dict[str, Any]:
        return {"ok": service.client.started, "model": service.model_id}

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return render(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = describe_errors(exc.errors(), skip_loc=1)
        return render(request.url.path, APIError(400, message, param=field, code="invalid_value"))

    @app.exception_handler(_BodyTooLarge)
    async def body_too_large(request: Request, exc: _BodyTooLarge) -> JSONResponse:
        limit = settings.max_body_bytes
        return render(request.url.path, APIError(413, f"request body over {limit} bytes"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
        return render(request.url.path, error)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)

    if settings.cors_origins:
        # "*" headers: the openai JS SDK sends its own (x-stainless-*, openai-organization, ...).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["x-request-id", "retry-after"],
            max_age=600,
        )
    app.add_middleware(GatewayMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AccessMiddleware, allowed_origins=settings.cors_origins)
    return app
