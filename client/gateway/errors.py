"""Errors the gateway answers with, in the shape each API's clients expect.

OpenAI routes (/v1/...) answer ``{"error": {"message", "type", "param", "code"}}``;
chat.petals.dev routes (/api/...) answer ``{"ok": false, "traceback": message}`` (that API's
name for the error text; we never send a real traceback).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from client.errors import InvalidRequest

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "api_error")

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def petals_body(self) -> dict[str, Any]:
        return {"ok": False, "traceback": self.message}


def bad_request(exc: InvalidRequest) -> APIError:
    return APIError(400, str(exc), param=exc.field, code="invalid_value")


def render(path: str, error: APIError) -> JSONResponse:
    body = error.petals_body() if path.startswith("/api/") else error.openai_body()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error envelope."""

    error: OpenAIErrorDetail


class PetalsError(BaseModel):
    """chat.petals.dev's error shape."""

    ok: bool = False
    traceback: str


def openai_responses() -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": OpenAIError, "description": description}
        for status, description in (
            (400, "bad parameters or prompt (the message names the field and the limit)"),
            (401, "missing or wrong bearer token"),
            (403, "a browser origin that is not allowed (cors_origins)"),
            (404, "unknown model"),
            (413, "request body too large"),
            (429, "rate limit or concurrency limit of this token"),
            (500, "a bug in the gateway (the log has the request id)"),
            (503, "the private swarm cannot serve right now, or the gateway's queue is full"),
        )
    }


def petals_responses() -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": PetalsError, "description": description}
        for status, description in (
            (400, "bad parameters or prompt"),
            (401, "missing or wrong bearer token"),
            (413, "request body too large"),
            (429, "rate limit or concurrency limit of this token"),
            (503, "the private swarm cannot serve right now"),
        )
    }
