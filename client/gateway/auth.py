"""FastAPI dependencies: the service behind the app, and the caller behind a bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from client.gateway.service import GatewayService

# auto_error=False: we answer a missing token ourselves, in the route family's error shape.
bearer = HTTPBearer(auto_error=False, description="a token from `petalctl gateway token add`")


def service_of(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


def caller_name(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The name of the caller's token (401 when missing or wrong)."""
    service = service_of(request)
    if credentials is None:  # the web chat: its session cookie (SameSite, Origin-checked)
        name = service.cookie_caller(request.cookies.get("petals_session"))
        if name is not None:
            return name
    token = credentials.credentials if credentials is not None else None
    return service.authenticate(token)
