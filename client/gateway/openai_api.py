"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions (SSE or JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from client.gateway.access import request_id
from client.gateway.auth import caller_name, service_of
from client.gateway.chat_prompt import split_prefill
from client.gateway.errors import APIError, openai_responses
from client.gateway.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    GenerationRequest,
    ModelCard,
    ModelList,
)
from client.gateway.service import Admission, GatewayService, Outcome, finish_reason
from client.params import GenerationParams
from client.swarm_client import PreparedPrompt

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], responses=openai_responses())
STARTED = int(time.time())
WAITING_FOR_CAPACITY = ": waiting for server capacity\n\n"

Service = Annotated[GatewayService, Depends(service_of)]
Caller = Annotated[str, Depends(caller_name)]

STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the answer as JSON, or with stream=true as server-sent events "
        "(chunks, then `data: [DONE]`)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/models", response_model=ModelList, summary="the one model this gateway serves")
async def list_models(service: Service, caller: Caller) -> ModelList:
    return ModelList(data=[ModelCard(id=service.model_id, created=STARTED, owned_by="private")])


@router.get("/models/{model_id:path}", response_model=ModelCard, summary="one model, by id")
async def get_model(model_id: str, service: Service, caller: Caller) -> ModelCard:
    service.check_model(model_id)
    return ModelCard(id=service.model_id, created=STARTED, owned_by="private")


def _unsupported(name: str, why: str) -> APIError:
    return APIError(400, f"{name}: {why}", param=name, code="unsupported_parameter")


def refuse_unsupported(body: GenerationRequest) -> None:
    """400 naming the parameter for what the kit cannot honour, instead of silently ignoring it
    (an agent framework would get plain text and no error)."""
    if body.n != 1:
        raise _unsupported("n", f"n = {body.n}: only one choice (n = 1) is supported")
    sampling = body.temperature is None or body.temperature > 0
    if body.seed is not None and sampling:
        raise _unsupported(
            "seed",
            "seeded sampling is not supported; leave seed out, or use temperature 0 (greedy "
            "decoding is deterministic)",
        )
    if not isinstance(body, ChatCompletionRequest):
        return
    if body.tools or body.functions:
        name = "tools" if body.tools else "functions"
        raise _unsupported(name, "tool and function calling are not supported by this model")
    for name in ("tool_choice", "function_call"):
        value = getattr(body, name)
        if value is not None and value not in ("none", "auto"):
            raise _unsupported(name, "tool and function calling are not supported")
    kind = (body.response_format or {}).get("type", "text")
    if kind != "text":
        raise _unsupported(
            "response_format",
            f"type {kind!r}: only 'text' is supported (no JSON mode or JSON schema)",
        )
    if body.logprobs or body.top_logprobs:
        name = "logprobs" if body.logprobs else "top_logprobs"
        raise _unsupported(name, "log probabilities are not supported; leave it out")
    if body.logit_bias:
        raise _unsupported("logit_bias", "not supported; leave it out")


def _common_params(
    service: GatewayService, body: GenerationRequest, max_new: int | None, field: str
) -> GenerationParams:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise APIError(
                400,
                f"{name} = {getattr(body, name)}: only 0 is supported (use repetition_penalty)",
                param=name,
                code="unsupported_parameter",
            )
    temperature = 1.0 if body.temperature is None else body.temperature
    return service.params(
        max_new_tokens=service.max_new_tokens(max_new, field=field),
        temperature=temperature,
        do_sample=temperature > 0,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        min_new_tokens=body.min_tokens,
        stop=body.stop,
    )


def _usage(prepared: PreparedPrompt, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prepared.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prepared.prompt_tokens + completion_tokens,
    }


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def _event_stream(
    service: GatewayService,
    route: str,
    prepared: PreparedPrompt,
    admission: Admission,
    outcome: Outcome,
    chunk: Any,
    include_usage: bool,
    prefix: str = "",
) -> AsyncIterator[str]:
    """SSE events: ``chunk(text, finish_reason)`` shapes each event for its API. While no token
    comes (queued for a slot, or a slow first token) a comment line keeps proxies and clients
    from timing out (``: waiting for server capacity`` while the servers' caches are full); an
    error after the status line went out becomes an error event, and the stream still ends with
    ``[DONE]``."""
    started = chunk(None, None)
    if started is not None:
        yield _sse(started)
    if prefix:
        yield _sse(chunk(prefix, None))
    deltas = service.deltas(route, prepared, admission, outcome)
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(deltas.__anext__())
            while not pending.done():
                changed = asyncio.ensure_future(outcome.changed.wait())
                try:
                    done, _ = await asyncio.wait(
                        {pending, changed},
                        timeout=service.settings.keepalive_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    changed.cancel()
                if pending.done():
                    break
                if outcome.changed.is_set():  # the reason at once, not at the next keep-alive
                    outcome.changed.clear()
                    if outcome.waiting_for_capacity:
                        yield WAITING_FOR_CAPACITY
                elif not done:
                    waiting = outcome.waiting_for_capacity
                    yield WAITING_FOR_CAPACITY if waiting else ": keep-alive\n\n"
            try:
                delta = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            yield _sse(chunk(delta, None))
        yield _sse(chunk("", finish_reason(outcome.stats)))
        if include_usage and outcome.stats is not None:
            final = chunk("", None)
            final["choices"] = []
            final["usage"] = _usage(prepared, outcome.stats.completion_tokens)
            yield _sse(final)
    except APIError as exc:  # the status line is sent already: report in the stream
        yield _sse(exc.openai_body())
    except Exception:
        logger.exception("error in a stream (request id %s)", request_id())
        error = APIError(500, f"internal error (request id {request_id()})")
        yield _sse(error.openai_body())
    finally:
        if pending is not None and not pending.done():
            pending.cancel()  # the generation stops within a token and frees its slot
            with contextlib.suppress(BaseException):
                await pending
        else:
            with contextlib.suppress(BaseException):
                await deltas.aclose()
    yield _sse("[DONE]")


def _streaming(
    service: GatewayService,
    route: str,
    prepared: PreparedPrompt,
    admission: Admission,
    chunk: Any,
    body: GenerationRequest,
    prefix: str = "",
) -> StreamingResponse:
    outcome = Outcome()
    include = bool(body.stream_options and body.stream_options.include_usage)
    events = _event_stream(service, route, prepared, admission, outcome, chunk, include, prefix)

    def cleanup() -> None:
        # Runs after the response, also when the client left before the first event (then the
        # event generator never started and its own cleanup never ran).
        outcome.cancel.cancel()
        admission.release()

    return StreamingResponse(
        events, media_type="text/event-stream", background=BackgroundTask(cleanup)
    )


async def _admitted(
    service: GatewayService,
    caller: str,
    prompt: Any,
    params: GenerationParams,
    prefill: str | None = None,
) -> tuple[PreparedPrompt, Admission]:
    """Admission first (cheap: rate, concurrency, queue), then tokenizing and trimming."""
    admission = service.admit(caller)
    prepared = await service.prepare(prompt, params, admission, prefill=prefill)
    return prepared, admission


@router.post(
    "/chat/completions",
    summary="chat completion (streamed with stream=true)",
    response_model=ChatCompletion,
    responses=STREAM_RESPONSE,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: Service, caller: Caller
) -> Any:
    route = "/v1/chat/completions"
    service.check_model(body.model)
    refuse_unsupported(body)
    given = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    service.check_prompt_chars(sum(len(m["content"]) for m in given), field="messages")
    messages, prefill = split_prefill(given)
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = _common_params(service, body, body.max_completion_tokens or body.max_tokens, field)
    prepared, admission = await _admitted(service, caller, messages, params, prefill)
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:

        def chunk(text: str | None, reason: str | None) -> dict[str, Any] | None:
            delta: dict[str, str] = {}
            if text is None:
                delta = {"role": "assistant", "content": ""}
            elif text:
                delta = {"content": text}
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": service.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        return _streaming(service, route, prepared, admission, chunk, body)

    text, stats = await service.collect(request, route, prepared, admission)
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": service.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason(stats),
                }
            ],
            "usage": _usage(prepared, stats.completion_tokens),
        }
    )


@router.post(
    "/completions",
    summary="text completion of a raw prompt (streamed with stream=true)",
    response_model=Completion,
    responses=STREAM_RESPONSE,
)
async def completions(
    body: CompletionRequest, request: Request, service: Service, caller: Caller
) -> Any:
    route = "/v1/completions"
    service.check_model(body.model)
    refuse_unsupported(body)
    for name in ("logprobs", "suffix"):
        if getattr(body, name) is not None:
            raise APIError(
                400,
                f"{name}: not supported; leave it out",
                param=name,
                code="unsupported_parameter",
            )
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise APIError(
                400,
                f"prompt: a list must hold exactly one text (got {len(body.prompt)})",
                param="prompt",
                code="invalid_value",
            )
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    service.check_prompt_chars(len(prompt), field="prompt")
    params = _common_params(service, body, body.max_tokens, "max_tokens")
    prepared, admission = await _admitted(service, caller, prompt, params)
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    echo = prompt if body.echo else ""

    if body.stream:

        def chunk(text: str | None, reason: str | None) -> dict[str, Any] | None:
            if text is None:
                return None
            return {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": service.model_id,
                "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}],
            }

        return _streaming(service, route, prepared, admission, chunk, body, echo)

    text, stats = await service.collect(request, route, prepared, admission)
    return JSONResponse(
        {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": service.model_id,
            "choices": [
                {
                    "index": 0,
                    "text": echo + text,
                    "finish_reason": finish_reason(stats),
                    "logprobs": None,
                }
            ],
            "usage": _usage(prepared, stats.completion_tokens),
        }
    )
