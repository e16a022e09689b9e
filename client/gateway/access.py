"""Per-request bookkeeping: an ``x-request-id``, one access-log line, and the Origin check.

The access log says route, status, bearer token name, tokens (prompt + completion) and
duration; never the prompt, the answer, the query string (a WebSocket ``?token=`` would be in
it) or the token. Routes add to the line through ``note_caller`` and ``note_tokens``, which
find the request's record in a context variable (a dict shared with the tasks the request
starts, so tokens counted by a streaming response's task still land in it).

Origin check: browsers send ``Origin`` on cross-site requests. One that is neither the
gateway's own origin nor in ``cors_origins`` is refused with 403 before any route runs, so a
page a campus user happens to open cannot drive the gateway (in anonymous mode, or through
the web chat's cookie). Clients that are not browsers send no Origin and are not affected.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("client.gateway.access")
_record: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "gateway_access_record", default=None
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def note_caller(name: str) -> None:
    record = _record.get()
    if record is not None:
        record["token"] = name


def note_tokens(prompt: int, completion: int) -> None:
    record = _record.get()
    if record is not None:
        record["tokens"] += prompt + completion


def request_id() -> str | None:
    record = _record.get()
    return None if record is None else str(record["id"])


def origin_allowed(scope: Scope, allowed: list[str]) -> bool:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    host = headers.get("host")
    secure = scope.get("scheme") in ("https", "wss")
    return host is not None and origin in (
        f"{'https' if secure else 'http'}://{host}",
        f"https://{host}",  # behind a TLS-terminating proxy the scheme here is http
    )


class AccessMiddleware:
    """Outermost: request id, Origin check, access log (HTTP and WebSocket)."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app, self.allowed_origins = app, allowed_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        ident = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        record: dict[str, Any] = {"id": ident, "token": "-", "tokens": 0, "status": 500}
        started_response = False
        reset = _record.set(record)
        started = time.monotonic()

        async def tagged_send(message: Message) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
                record["status"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", ident.encode("latin-1")),
                ]
            elif message["type"] == "websocket.accept":
                record["status"] = 101
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", ident.encode("latin-1")),
                ]
            elif message["type"] == "websocket.close" and record["status"] == 500:
                record["status"] = 403
            await send(message)

        try:
            if not origin_allowed(scope, self.allowed_origins):
                await self._refuse(scope, receive, tagged_send)
                return
            await self.app(scope, receive, tagged_send)
        except Exception:
            # A bug: answer 500 in the route's error shape (JSON, with the request id), unless
            # the response had begun; the traceback goes to the log, never to the client.
            logger.exception("unexpected error (request id %s)", ident)
            if started_response or scope["type"] != "http":
                raise
            from client.gateway.errors import APIError, render

            error = APIError(
                500, f"internal error; the gateway's log has the details (request id {ident})"
            )
            await render(scope["path"], error)(scope, receive, tagged_send)
        finally:
            _record.reset(reset)
            route = scope.get("route")
            logger.info(
                "%s %s %s status=%s token=%s tokens=%d duration=%.3fs id=%s",
                scope.get("client", ("-",))[0] if scope.get("client") else "-",
                scope.get("method", "WS"),
                getattr(route, "path", None) or scope.get("path", "-"),
                record["status"],
                record["token"],
                record["tokens"],
                time.monotonic() - started,
                ident,
            )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        from client.gateway.errors import APIError, render

        error = APIError(
            403,
            "this browser origin may not use the gateway: add it to cors_origins "
            "(PETALS_GATEWAY_CORS_ORIGINS)",
            code="origin_not_allowed",
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})
            return
        await render(scope["path"], error)(scope, receive, send)
