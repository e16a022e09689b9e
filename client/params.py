"""What a caller may ask of one generation, with the bounds every entry point enforces.

``GenerationParams`` is the one request model behind the library, the CLI and the gateway; its
bounds are fixed here so that a message can always name the field and the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from client.errors import InvalidRequest

MAX_NEW_TOKENS_LIMIT = 4096
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64


class GenerationParams(BaseModel):
    """Sampling and length controls of one answer. Greedy unless ``do_sample`` is true and
    ``temperature`` > 0 (temperature 0 means greedy, as in OpenAI's API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(
        256, ge=1, le=MAX_NEW_TOKENS_LIMIT, description="upper bound on generated tokens"
    )
    min_new_tokens: int = Field(
        0, ge=0, le=MAX_NEW_TOKENS_LIMIT, description="tokens to generate before EOS may end"
    )
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling probability mass")
    top_k: int = Field(0, ge=0, le=1000, description="sample from the k likeliest tokens (0: off)")
    repetition_penalty: float = Field(
        1.0, ge=1.0, le=2.0, description="penalty for repeating tokens (1: off)"
    )
    do_sample: bool = Field(False, description="sample instead of greedy decoding")
    stop: tuple[str, ...] = Field(
        (),
        max_length=MAX_STOP_SEQUENCES,
        description=f"up to {MAX_STOP_SEQUENCES} strings that end the answer (not included)",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        return value

    @field_validator("stop")
    @classmethod
    def _stop_items(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not 1 <= len(item) <= MAX_STOP_LENGTH:
                raise ValueError(
                    f"each stop sequence must be 1 to {MAX_STOP_LENGTH} characters, got {len(item)}"
                )
        return value

    @model_validator(mode="after")
    def _min_below_max(self) -> GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens "
                f"({self.max_new_tokens})"
            )
        return self

    @property
    def sampling(self) -> bool:
        return self.do_sample and self.temperature > 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (sampling knobs only when sampling,
        so transformers does not warn about unused ones; top_k=0 switches its default 50 off)."""
        kwargs: dict[str, Any] = {
            "do_sample": self.sampling,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.min_new_tokens:
            kwargs["min_new_tokens"] = self.min_new_tokens
        if self.sampling:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs

    @classmethod
    def build(cls, **values: Any) -> GenerationParams:
        """Like the constructor; a bad value raises ``InvalidRequest`` naming field and limit."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            raise invalid_request(exc) from None


def describe_errors(errors: Sequence[Any], *, skip_loc: int = 0) -> tuple[str, str | None]:
    """One line for pydantic error dicts ("temperature = 3.0: must be ≤ 2") and the first field."""
    parts: list[str] = []
    first: str | None = None
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())[skip_loc:]]
        field = ".".join(loc) or None
        first = first or field
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        value = error.get("input")
        shown = "" if isinstance(value, dict | list) or error.get("type") == "missing" else value
        if field is None:
            parts.append(message)
        elif shown == "":
            parts.append(f"{field}: {message}")
        else:
            parts.append(f"{field} = {shown!r}: {message}")
    return "; ".join(parts) or "invalid request", first


def invalid_request(exc: ValidationError) -> InvalidRequest:
    message, field = describe_errors(exc.errors())
    return InvalidRequest(message, field=field)
