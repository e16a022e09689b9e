"""chat.petals.dev-compatible routes: POST /api/v1/generate and WebSocket /api/v2/generate.

HTTP: form or JSON fields ``model, inputs, max_length | max_new_tokens, do_sample, temperature,
top_k, top_p, repetition_penalty`` -> ``{"ok": true, "outputs": text}``. The inputs are raw text
(the caller writes the chat format), as on chat.petals.dev.

WebSocket: ``{"type": "open_inference_session", "max_length": N}`` -> ``{"ok": true}``; then
each ``{"type": "generate", "inputs": text, "max_new_tokens": n, "stop_sequence": s, ...}``
continues the same inference session. Without a stop sequence it answers once with ``n``
tokens; with one (or ``extra_stop_sequences``) it streams ``{"ok": true, "outputs": delta,
"stop": false}`` messages until the stop sequence (not included), EOS or the length limit, then
``{"ok": true, "outputs": "", "stop": true}``. Errors: ``{"ok": false, "traceback": message}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from client.errors import GenerationFailed, InvalidRequest
from client.gateway.auth import caller_name, service_of
from client.gateway.errors import APIError, bad_request, petals_responses
from client.gateway.service import GatewayService
from client.params import MAX_NEW_TOKENS_LIMIT, GenerationParams, describe_errors
from client.session import SwarmSession
from client.streams import CancelToken
from swarm.errors import SwarmUnavailable

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["chat.petals.dev-compatible"])
HTTP_ROUTE, WS_ROUTE = "/api/v1/generate", "/api/v2/generate"


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    do_sample: bool = Field(False, description="sample (1) or greedy (0)")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_k: int | None = Field(None, ge=0, le=1000)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0)


class GenerateForm(_Sampling):
    """Body of POST /api/v1/generate (JSON or form fields)."""

    model: str | None = Field(None, max_length=256)
    inputs: str = Field(..., description="the prompt, as raw text")
    max_length: int | None = Field(None, ge=1, description="prompt plus answer, in tokens")
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)


class GenerateReply(BaseModel):
    ok: bool = True
    outputs: str


class OpenSession(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    model: str | None = Field(None, max_length=256)
    max_length: int = Field(..., ge=1)


class GenerateStep(_Sampling):
    type: str
    inputs: str | None = None
    max_new_tokens: int = Field(1, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    stop_sequence: str | None = Field(None, min_length=1, max_length=64)
    extra_stop_sequences: list[str] | None = Field(None, max_length=3)


def _form_schema() -> dict[str, Any]:
    schema = GenerateForm.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


async def _read_form(request: Request) -> GenerateForm:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    try:
        if kind == "application/json":
            values = json.loads(raw or b"null")
            if not isinstance(values, dict):
                raise APIError(400, "the JSON body must be an object", code="invalid_value")
        elif kind in ("application/x-www-form-urlencoded", ""):
            values = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        elif kind == "multipart/form-data":
            values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        else:
            raise APIError(
                400,
                f"content-type {kind!r}: send application/json or a form",
                code="unsupported_media_type",
            )
        return GenerateForm.model_validate(values)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"cannot read the body: {exc}", code="invalid_value") from None
    except ValidationError as exc:
        message, field = describe_errors(exc.errors())
        raise APIError(400, message, param=field, code="invalid_value") from None


def _params(
    service: GatewayService, form: _Sampling, max_new_tokens: int, stop: Any = None
) -> GenerationParams:
    return service.params(
        max_new_tokens=max_new_tokens,
        do_sample=form.do_sample,
        temperature=form.temperature,
        top_k=form.top_k,
        top_p=form.top_p,
        repetition_penalty=form.repetition_penalty,
        stop=stop,
    )


@router.post(
    "/v1/generate",
    summary="generate from raw text (chat.petals.dev's HTTP API)",
    response_model=GenerateReply,
    responses=petals_responses(),
    openapi_extra=_form_schema(),
)
async def generate(
    request: Request,
    service: Annotated[GatewayService, Depends(service_of)],
    caller: Annotated[str, Depends(caller_name)],
) -> GenerateReply:
    form = await _read_form(request)
    service.check_model(form.model)
    service.check_prompt_chars(len(form.inputs), field="inputs")
    if form.max_new_tokens is not None or form.max_length is None:
        max_new = service.max_new_tokens(form.max_new_tokens, field="max_new_tokens")
    else:
        prompt_tokens = len(await asyncio.to_thread(service.client.encode, form.inputs))
        max_new = form.max_length - prompt_tokens
        if max_new < 1:
            raise APIError(
                400,
                f"max_length = {form.max_length}: must exceed the prompt's {prompt_tokens} tokens",
                param="max_length",
                code="invalid_value",
            )
        max_new = service.max_new_tokens(max_new, field="max_length")
    prepared = await service.prepare(form.inputs, _params(service, form, max_new))
    admission = service.admit(caller)
    text, _ = await service.collect(request, HTTP_ROUTE, prepared, admission)
    return GenerateReply(outputs=text)


# -- WebSocket ---------------------------------------------------------------------------------
async def _send(websocket: WebSocket, payload: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(payload, ensure_ascii=False))


async def _receive_json(websocket: WebSocket, pending: asyncio.Task[Any] | None) -> Any:
    message = await pending if pending is not None else await websocket.receive_text()
    try:
        return json.loads(message)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"messages must be JSON: {exc}", code="invalid_value") from None


def _parse(model: type[BaseModel], data: Any, expected_type: str) -> Any:
    if not isinstance(data, dict) or data.get("type") != expected_type:
        raise APIError(400, f"expected a message of type {expected_type!r}", param="type")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = describe_errors(exc.errors())
        raise APIError(400, message, param=field, code="invalid_value") from None


@router.websocket("/v2/generate")
async def generate_ws(websocket: WebSocket) -> None:
    service: GatewayService = websocket.app.state.service
    metrics = service.metrics
    await websocket.accept()
    session: SwarmSession | None = None
    admission = None
    try:
        header = websocket.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        caller = service.authenticate(token or websocket.query_params.get("token"))
        opening = _parse(
            OpenSession, await _receive_json(websocket, None), "open_inference_session"
        )
        service.check_model(opening.model)
        admission = service.admit(caller)
        try:
            session = service.client.open_session(opening.max_length)
        except InvalidRequest as exc:
            raise bad_request(exc) from None
        await _send(websocket, {"ok": True})
        pending: asyncio.Task[Any] | None = None
        while True:
            step = _parse(GenerateStep, await _receive_json(websocket, pending), "generate")
            pending = None
            if step.inputs is not None:
                service.check_prompt_chars(len(step.inputs), field="inputs")
            wait = service.rate.take(caller)
            if wait > 0:
                raise APIError(429, f"rate limit reached for this token; retry in {wait:.1f} s")
            pending = await _run_step(websocket, service, session, step)
            metrics.requests.labels(WS_ROUTE, "200").inc()
    except (WebSocketDisconnect, _Gone):
        pass
    except APIError as exc:
        metrics.requests.labels(WS_ROUTE, str(exc.status)).inc()
        with contextlib.suppress(Exception):
            await _send(websocket, exc.petals_body())
            await websocket.close()
    finally:
        if session is not None:
            await session.aclose()  # the servers free the session's attention cache now
        if admission is not None:
            admission.release()


class _Gone(Exception):
    """The WebSocket client went away during a generation."""


async def _run_step(
    websocket: WebSocket, service: GatewayService, session: SwarmSession, step: GenerateStep
) -> asyncio.Task[Any]:
    """One generate message. Returns the task already reading the client's next message; it
    also notices a disconnect, which cancels the generation within a token."""
    stops = [s for s in [step.stop_sequence, *(step.extra_stop_sequences or [])] if s]
    streaming = bool(stops)
    if streaming:
        # Until a stop sequence: as many tokens as the session has room for, within the limit.
        new_tokens = 0
        if step.inputs is not None:
            first = not session.token_ids
            ids = await asyncio.to_thread(
                service.client.encode, step.inputs, add_special_tokens=first
            )
            new_tokens = len(ids)
        room = session.room - new_tokens
        if room < 1:
            raise APIError(
                400,
                f"the session's max_length ({session.max_length}) is used up",
                param="max_length",
                code="invalid_value",
            )
        max_new = min(room, service.settings.max_new_tokens_limit)
    else:
        max_new = service.max_new_tokens(step.max_new_tokens, field="max_new_tokens")
    params = _params(service, step, max_new, stop=stops[:4] or None)
    cancel = CancelToken()
    stream = session.astream(step.inputs, params, cancel=cancel)
    receiver = asyncio.ensure_future(websocket.receive_text())

    def on_receive(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            cancel.cancel()  # the client went away: stop generating

    receiver.add_done_callback(on_receive)
    metrics = service.metrics
    metrics.active.labels(WS_ROUTE).inc()
    finished = False
    try:
        if streaming:
            async for delta in stream:
                await _send(websocket, {"ok": True, "outputs": delta, "stop": False})
            await _send(websocket, {"ok": True, "outputs": "", "stop": True, "token_count": 0})
        else:
            text = await stream.text()
            count = stream.result.completion_tokens
            await _send(
                websocket, {"ok": True, "outputs": text, "stop": True, "token_count": count}
            )
        finished = True
        metrics.observe(WS_ROUTE, stream.result)
    except InvalidRequest as exc:
        raise bad_request(exc) from None
    except (GenerationFailed, SwarmUnavailable) as exc:
        metrics.errors.labels(WS_ROUTE, "swarm_unavailable").inc()
        raise APIError(503, str(exc), code="swarm_unavailable") from None
    except Exception as exc:
        if cancel.cancelled or receiver.done():
            raise _Gone from exc
        raise
    finally:
        metrics.active.labels(WS_ROUTE).dec()
        if not finished:
            cancel.cancel()
            receiver.cancel()
            await stream.aclose()
            metrics.stops.labels(WS_ROUTE, "cancelled").inc()
    if stream.result.stop_reason == "cancelled":
        raise _Gone
    return receiver
