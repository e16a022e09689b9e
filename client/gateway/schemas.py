"""Request and response bodies of the OpenAI-compatible routes, with bounds.

Unknown fields are ignored (as OpenAI-compatible servers do; chat UIs send extras), known ones
are checked. ``top_k`` and ``repetition_penalty`` are extensions (vLLM and others accept them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from client.params import MAX_NEW_TOKENS_LIMIT, MAX_STOP_SEQUENCES

Stop = str | list[str] | None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields the chat and text completion requests share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., max_length=256, description="the id from /v1/models")
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0: greedy; default 1")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1000, description="extension: 0 switches it off")
    repetition_penalty: float | None = Field(None, ge=1.0, le=2.0, description="extension")
    min_tokens: int | None = Field(
        None, ge=0, le=MAX_NEW_TOKENS_LIMIT, description="extension: tokens before EOS may end"
    )
    stop: Stop = Field(None, description=f"up to {MAX_STOP_SEQUENCES} stop sequences")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=128, description="only 1 is supported (400 otherwise)")
    seed: int | None = Field(
        None, description="accepted for greedy decoding (temperature 0), which is deterministic"
    )
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")
    user: str | None = Field(None, max_length=256)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """``content: null`` (an assistant turn that only called tools) reads as empty text. The
    ``tool``/``function`` roles parse, to be refused with a 400 that names them."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    # Parsed only to be refused by name: the kit cannot honour them (see UNSUPPORTED).
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] = Field(..., description="text, or a list of exactly one text")
    echo: bool = False
    best_of: int = Field(1, ge=1, le=1, description="only 1 is supported")
    logprobs: int | None = Field(None, description="not supported: leave it out")
    suffix: str | None = Field(None, description="not supported: leave it out")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatChoiceMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
