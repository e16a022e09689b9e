"""chat.petals.dev-compatible routes: POST /api/v1/generate and WebSocket /api/v2/generate.

HTTP: form or JSON fields ``model, inputs, max_length | max_new_tokens, do_sample, temperature,
top_k, top_p, repetition_penalty`` -> ``{"ok": true, "outputs": text}``. The inputs are raw text
(the caller writes the chat format), as on chat.petals.dev. ``max_length`` counts the prompt too.

WebSocket: ``{"type": "open_inference_session", "max_length": N}`` -> ``{"ok": true}``; the
session belongs to this connection and closes with it. Then each ``{"type": "generate",
"inputs": text, "max_new_tokens": n | "max_length": total, ...}`` continues it. Without a stop
sequence: one reply ``{"ok": true, "outputs": text, "stop": true, "token_count": k}``. With
``stop_sequence`` (and ``extra_stop_sequences``) the server repeats steps of ``max_new_tokens``
tokens, one message per step ``{"ok": true, "outputs": text, "stop": false, "token_count": k}``,
until a stop sequence (left out of the outputs), EOS, ``max_length`` or the session's end; the
last message has ``"stop": true``. When the session is full the error text contains "Maximum
length exceeded" (chat.petals.dev's frontend then reopens a larger session). Errors:
``{"ok": false, "traceback": message}``, and the connection closes. A connection idle for
``ws_idle_timeout_s`` is closed, which frees its session and its slot of the token's limit.
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
    max_length: int | None = Field(None, ge=1, description="session length to stop at, in tokens")
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
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
    if form.max_new_tokens is None and form.max_length is None:
        raise APIError(
            400,
            "give max_new_tokens or max_length (either is required)",
            param="max_new_tokens",
            code="invalid_value",
        )
    if form.max_new_tokens is not None:
        max_new = service.max_new_tokens(form.max_new_tokens, field="max_new_tokens")
    admission = service.admit(caller)  # before tokenizing: refusals stay cheap
    try:
        if form.max_new_tokens is None and form.max_length is not None:
            prompt_tokens = len(await asyncio.to_thread(service.client.encode, form.inputs))
            max_new = form.max_length - prompt_tokens
            if max_new < 1:
                raise APIError(
                    400,
                    f"max_length = {form.max_length}: must exceed the prompt's {prompt_tokens} "
                    "tokens",
                    param="max_length",
                    code="invalid_value",
                )
            max_new = service.max_new_tokens(max_new, field="max_length")
        params = _params(service, form, max_new)
    except BaseException:
        admission.release()
        raise
    prepared = await service.prepare(form.inputs, params, admission)
    text, _ = await service.collect(request, HTTP_ROUTE, prepared, admission)
    return GenerateReply(outputs=text)


# -- WebSocket ---------------------------------------------------------------------------------
MAX_LENGTH_EXCEEDED = "Maximum length exceeded"  # chat.petals.dev's frontend looks for this text


async def _send(websocket: WebSocket, payload: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(payload, ensure_ascii=False))


def _decode(message: str) -> Any:
    try:
        return json.loads(message)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"messages must be JSON: {exc}", code="invalid_value") from None


class _Idle(Exception):
    """The client sent nothing for ws_idle_timeout_s."""


async def _next_message(
    websocket: WebSocket, pending: asyncio.Future[str] | None, idle_s: float
) -> Any:
    future = pending or asyncio.ensure_future(websocket.receive_text())
    done, _ = await asyncio.wait({future}, timeout=idle_s)
    if not done:
        future.cancel()
        raise _Idle
    return _decode(future.result())


def _parse(model: type[BaseModel], data: Any, expected_type: str) -> Any:
    if not isinstance(data, dict) or data.get("type") != expected_type:
        raise APIError(400, f"expected a message of type {expected_type!r}", param="type")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, field = describe_errors(exc.errors())
        raise APIError(400, message, param=field, code="invalid_value") from None


def websocket_token(service: GatewayService, websocket: WebSocket) -> str | None:
    """The bearer token of a WebSocket: the Authorization header, or (only with
    allow_query_token) ``?token=``, which lands in proxy logs. Browsers may instead use the web
    chat's session cookie."""
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:]
    if service.settings.allow_query_token:
        return websocket.query_params.get("token")
    return None


@router.websocket("/v2/generate")
async def generate_ws(websocket: WebSocket) -> None:
    service: GatewayService = websocket.app.state.service
    metrics = service.metrics
    await websocket.accept()
    session: SwarmSession | None = None
    admission = None
    idle_s = service.settings.ws_idle_timeout_s
    try:
        token = websocket_token(service, websocket)
        cookie = service.cookie_caller(websocket.cookies.get("petals_session"))
        caller = cookie if token is None and cookie is not None else service.authenticate(token)
        opening = _parse(
            OpenSession,
            await _next_message(websocket, None, idle_s),
            "open_inference_session",
        )
        service.check_model(opening.model)
        admission = service.admit(caller)
        try:
            session = service.client.open_session(opening.max_length)
        except InvalidRequest as exc:
            raise bad_request(exc) from None
        await _send(websocket, {"ok": True})
        pending: asyncio.Future[str] | None = None
        while True:
            step = _parse(GenerateStep, await _next_message(websocket, pending, idle_s), "generate")
            pending = None
            if step.inputs is not None:
                service.check_prompt_chars(len(step.inputs), field="inputs")
            wait = service.rate.take(caller)
            if wait > 0:
                raise APIError(429, f"rate limit reached for this token; retry in {wait:.1f} s")
            pending = await _run_step(websocket, service, session, step, caller)
            metrics.requests.labels(WS_ROUTE, "200").inc()
    except (WebSocketDisconnect, _Gone):
        pass
    except _Idle:
        metrics.requests.labels(WS_ROUTE, "408").inc()
        with contextlib.suppress(Exception):
            await _send(
                websocket,
                {
                    "ok": False,
                    "traceback": f"no message for {idle_s:g} s: connection closed "
                    "(ws_idle_timeout_s)",
                },
            )
            await websocket.close(code=1000)
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


def _check_step(session: SwarmSession, step: GenerateStep) -> None:
    """The bounds of a generate message that need no tokens: checked before its inputs are
    tokenized, so refusing it costs next to nothing."""
    if step.max_length is not None and step.max_length > session.max_length:
        raise APIError(
            400,
            f"{MAX_LENGTH_EXCEEDED}: max_length = {step.max_length} is over the session's "
            f"max_length ({session.max_length})",
            param="max_length",
            code="invalid_value",
        )
    stops = step.stop_sequence or step.extra_stop_sequences
    if step.max_length is None and not stops and step.max_new_tokens is None:
        raise APIError(
            400,
            "generate: give max_new_tokens or max_length (either is required)",
            param="max_new_tokens",
            code="invalid_value",
        )
    if step.inputs is None and not session.token_ids:
        raise APIError(400, "inputs: the first generate of a session needs inputs", param="inputs")


def _budget(
    service: GatewayService, session: SwarmSession, step: GenerateStep, input_tokens: int
) -> tuple[int, int]:
    """(tokens this request may generate in all, tokens per message); ``_check_step`` first."""
    held = len(session.token_ids) + input_tokens
    room = session.max_length - held
    if step.max_length is not None:
        total = step.max_length - held
    elif step.stop_sequence or step.extra_stop_sequences:
        total = room  # until a stop sequence, or the session is full
    else:
        assert step.max_new_tokens is not None  # _check_step refused the rest
        total = step.max_new_tokens
    if total < 1 or total > room:
        raise APIError(
            400,
            f"{MAX_LENGTH_EXCEEDED}: the session holds {len(session.token_ids)} tokens, this "
            f"input adds {input_tokens}, and {max(total, 1)} more would pass its max_length "
            f"({session.max_length}); open a longer session",
            param="max_length",
            code="invalid_value",
        )
    total = min(total, service.settings.max_new_tokens_limit)
    return total, min(step.max_new_tokens or total, total)


def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence, and whether one was found."""
    found = [text.index(s) for s in stops if s in text]
    return (text[: min(found)], True) if found else (text, False)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could begin a stop sequence (sent only once they cannot)."""
    keep = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                keep = max(keep, size)
                break
    return keep


async def _run_step(
    websocket: WebSocket,
    service: GatewayService,
    session: SwarmSession,
    step: GenerateStep,
    caller: str,
) -> asyncio.Future[str]:
    """One generate message: steps of ``max_new_tokens`` tokens, one reply each. Returns the
    task already reading the client's next message; it also notices a disconnect, which
    cancels the generation within a token."""
    stops = [s for s in [step.stop_sequence, *(step.extra_stop_sequences or [])] if s][:4]
    _check_step(session, step)
    input_tokens = 0
    if step.inputs is not None:
        first = not session.token_ids
        ids = await asyncio.to_thread(service.client.encode, step.inputs, add_special_tokens=first)
        input_tokens = len(ids)
    total, per_message = _budget(service, session, step, input_tokens)
    cancel = CancelToken()
    receiver = asyncio.ensure_future(websocket.receive_text())

    def on_receive(task: asyncio.Future[str]) -> None:
        if not task.cancelled() and task.exception() is not None:
            cancel.cancel()  # the client went away: stop generating

    receiver.add_done_callback(on_receive)
    metrics = service.metrics
    metrics.active.labels(WS_ROUTE).inc()
    inputs, generated, sent = step.inputs, 0, 0
    answer_from = len(session.token_ids) + input_tokens
    stream = None
    try:
        while True:
            size = min(per_message, total - generated)
            # Stop sequences are checked here, across steps, on the text decoded from all of
            # this answer's tokens (a step decoded alone loses SentencePiece's leading spaces);
            # each step still ends early at EOS, or at a stop sequence within it.
            params = _params(service, step, size, stop=stops or None)
            stream = session.astream(inputs, params, cancel=cancel)
            inputs = None
            await stream.wait()
            stats = stream.result
            if stats.stop_reason == "cancelled":
                raise _Gone
            metrics.observe(WS_ROUTE, stats)
            service.usage(caller, stats.prompt_tokens, stats.completion_tokens)
            generated += stats.completion_tokens
            answer_ids = session.token_ids[answer_from:]
            decoded = await asyncio.to_thread(
                service.client.tokenizer.decode, answer_ids, skip_special_tokens=True
            )
            answer, stopped = _cut(decoded, stops)
            stopped = stopped or stats.stop_reason in ("eos", "stop_sequence")
            last = stopped or generated >= total or not stops or stats.completion_tokens == 0
            upto = len(answer) if last else len(answer) - _held_back(answer, stops)
            if not last:  # an incomplete UTF-8 sequence decodes as U+FFFD: wait for the rest
                while upto > sent and answer[upto - 1] == "\ufffd":
                    upto -= 1
            await _send(
                websocket,
                {
                    "ok": True,
                    "outputs": answer[sent:upto],
                    "stop": last,
                    "token_count": stats.completion_tokens,
                },
            )
            sent = max(sent, upto)
            if last:
                break
    except InvalidRequest as exc:
        raise bad_request(exc) from None
    except (GenerationFailed, SwarmUnavailable) as exc:
        metrics.errors.labels(WS_ROUTE, "swarm_unavailable").inc()
        raise APIError(503, str(exc), code="swarm_unavailable") from None
    except _Gone:
        raise
    except Exception as exc:
        if cancel.cancelled or receiver.done():
            raise _Gone from exc
        raise
    finally:
        metrics.active.labels(WS_ROUTE).dec()
        if cancel.cancelled or (stream is not None and not stream.finished):
            cancel.cancel()
            receiver.cancel()
            if stream is not None:
                await stream.aclose()
            metrics.stops.labels(WS_ROUTE, "cancelled").inc()
    return receiver
