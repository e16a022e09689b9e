"""OpenAI chat messages -> the swarm's prompt, for what chat UIs actually send.

- an assistant message last is a *prefill*: the answer continues that text (Open WebUI's
  "continue"); the reply holds only the continuation;
- an assistant greeting first (before any user message) gets an empty user turn before it,
  since the Llama-family templates open every exchange with a user turn;
- ``tool``/``function`` roles are refused by name (tools are refused, so a tool turn cannot be
  honoured either).

Prefill prompts are tokenized here with the gateway's own copy of the tokenizer (a fast
tokenizer must not be used from two threads at once, and the client's lock is its own), with
the same special-token guard and trimming as the client's ``prepare``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any

from client.errors import PromptTooLong
from client.gateway.errors import APIError
from client.params import GenerationParams
from client.swarm_client import PreparedPrompt, SwarmClient
from client.templates import Message, encode_chat, fit_messages, normalize_messages


def split_prefill(messages: Sequence[Message]) -> tuple[list[dict[str, str]], str | None]:
    """(messages ending with a user turn, the assistant text to continue or None)."""
    out: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if message["role"] in ("tool", "function"):
            raise APIError(
                400,
                f"messages[{index}].role = {message['role']!r}: tool calls are not supported "
                "by this gateway (leave out tools and tool messages)",
                param=f"messages[{index}].role",
                code="unsupported_parameter",
            )
        out.append({"role": message["role"], "content": message["content"]})
    prefill: list[str] = []
    while out and out[-1]["role"] == "assistant":
        prefill.insert(0, out.pop()["content"])
    first = next((i for i, m in enumerate(out) if m["role"] != "system"), None)
    if first is not None and out[first]["role"] == "assistant":
        out.insert(first, {"role": "user", "content": ""})
    if not any(m["role"] == "user" for m in out):
        raise APIError(
            400,
            "messages: give at least one user message",
            param="messages",
            code="invalid_value",
        )
    return out, ("\n\n".join(prefill) if prefill else None)


class PrefillPreparer:
    """Tokenizes prefill prompts (see the module docstring)."""

    def __init__(self, client: SwarmClient) -> None:
        self.client = client
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def prepare(
        self, messages: Sequence[Message], prefill: str, params: GenerationParams
    ) -> PreparedPrompt:
        client = self.client
        template = client.template
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = copy.deepcopy(client.tokenizer)
            tokenizer = self._tokenizer
            head = normalize_messages(messages)
            tail = {"role": "assistant", "content": prefill}

            def render(kept: Sequence[Message]) -> str:
                return template.render(kept[:-1]) + kept[-1]["content"]

            ids: dict[int, list[int]] = {}

            def count(kept: Sequence[Message]) -> int:
                ids[len(kept)], _ = encode_chat(tokenizer, render, [*kept, tail])
                return len(ids[len(kept)])

            budget = client.context_window - params.max_new_tokens
            if budget < 1:
                raise PromptTooLong(
                    f"max_new_tokens = {params.max_new_tokens} leaves no room for a prompt in "
                    f"the context window of {client.context_window} tokens",
                    field="max_new_tokens",
                )
            kept, dropped, _ = fit_messages(head, count, budget)
            return PreparedPrompt(tuple(ids[len(kept)]), params, template.stop_sequences, dropped)
