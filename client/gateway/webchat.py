"""The student web chat at ``/``: static HTML/CSS/JS shipped in the package, and cookie sign-in.

Signing in exchanges a gateway token for a random session id in an ``HttpOnly``,
``SameSite=Strict`` cookie (the page's script never sees a secret; nothing goes in URLs or
localStorage). Sessions live in memory, map to the token's name and end after
``web_session_hours``, at sign-out, or as soon as the token is revoked. Cross-site requests are
refused by the Origin check (client.gateway.access) on top of SameSite. The page talks to the
OpenAI route with ``stream: true``; its conversation stays in the browser.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from client.gateway.auth import service_of
from client.gateway.errors import APIError
from client.gateway.service import GatewayService

COOKIE = "petals_session"
router = APIRouter(tags=["web chat"])
_STATIC = {"chat.js": "text/javascript", "chat.css": "text/css"}
# No inline script or style, no other origin: an injected tag could do nothing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def _page(name: str) -> str:
    return resources.files("client.gateway").joinpath("static", name).read_text("utf-8")


def _headers(kind: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
        "Content-Type": kind,
    }


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_page("index.html"), headers=_headers("text/html; charset=utf-8"))


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    kind = _STATIC.get(name)
    if kind is None:
        raise APIError(404, f"no static file {name!r}")
    return Response(_page(name), headers=_headers(f"{kind}; charset=utf-8"))


class Login(BaseModel):
    token: str = Field(..., min_length=1, max_length=512)


@router.post("/auth/login", summary="web chat: exchange a token for a session cookie")
async def login(
    body: Login, request: Request, service: Annotated[GatewayService, Depends(service_of)]
) -> JSONResponse:
    name = service.authenticate(body.token)
    response = JSONResponse({"ok": True, "name": name})
    response.set_cookie(
        COOKIE,
        service.web_sessions.create(name),
        max_age=int(service.web_sessions.ttl),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https",
        path="/",
    )
    return response


@router.post("/auth/logout", summary="web chat: end the session")
async def logout(
    request: Request, service: Annotated[GatewayService, Depends(service_of)]
) -> JSONResponse:
    ident = request.cookies.get(COOKIE)
    if ident:
        service.web_sessions.end(ident)
    response = JSONResponse({"ok": True})
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/auth/me", summary="web chat: who the session cookie belongs to")
async def me(
    request: Request, service: Annotated[GatewayService, Depends(service_of)]
) -> dict[str, object]:
    name = service.cookie_caller(request.cookies.get(COOKIE))
    if name is None:
        raise APIError(401, "not signed in", code="invalid_api_key")
    return {"ok": True, "name": name, "model": service.model_id}
