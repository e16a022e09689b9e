"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions (SSE or JSON)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from client.gateway.auth import caller_name, service_of
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

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], responses=openai_responses())
STARTED = int(time.time())

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
    """SSE events: ``chunk(text, finish_reason)`` shapes each event for its API."""
    started = chunk(None, None)
    if started is not None:
        yield _sse(started)
    if prefix:
        yield _sse(chunk(prefix, None))
    try:
        async for delta in service.deltas(route, prepared, admission, outcome):
            yield _sse(chunk(delta, None))
        yield _sse(chunk("", finish_reason(outcome.stats)))
        if include_usage and outcome.stats is not None:
            final = chunk("", None)
            final["choices"] = []
            final["usage"] = _usage(prepared, outcome.stats.completion_tokens)
            yield _sse(final)
    except APIError as exc:  # the status line is sent already: report in the stream
        yield _sse(exc.openai_body())
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
    service: GatewayService, caller: str, prompt: Any, params: GenerationParams
) -> tuple[PreparedPrompt, Admission]:
    prepared = await service.prepare(prompt, params)
    return prepared, service.admit(caller)


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
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    service.check_prompt_chars(sum(len(m["content"]) for m in messages), field="messages")
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = _common_params(service, body, body.max_completion_tokens or body.max_tokens, field)
    prepared, admission = await _admitted(service, caller, messages, params)
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
