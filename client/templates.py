"""Prompt assembly: chat templates per model family and trimming a conversation to fit the context.

Pure functions: messages in, text out. ``Llama-2-chat`` uses ``[INST]``/``<<SYS>>``,
``Llama-3-instruct`` uses header tokens and ends a turn with ``<|eot_id|>``, ``StableBeluga2``
uses ``### System:``/``### User:``/``### Assistant:`` blocks, and any other model uses the chat
template its tokenizer ships (the tiny test model's is StableBeluga-style). Special tokens are
written as text (``<s>``, ``<|begin_of_text|>``) and must be tokenized with
``add_special_tokens=False``; Hugging Face tokenizers map those strings to their ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from client.errors import InvalidRequest, PromptTooLong

Message = Mapping[str, str]
ChatStyle = Literal["auto", "tokenizer", "llama2", "llama3", "stablebeluga"]
ROLES = ("system", "user", "assistant")

# Role headers that, when a template uses them, end the assistant's turn if the model writes one.
_HEADER_STOPS = ("### User:", "### System:", "### Human:")


@dataclass(frozen=True)
class ChatTemplate:
    """How one model family wants a conversation written."""

    name: str
    render: Callable[[Sequence[Message]], str]  # normalized messages -> prompt text
    stop_sequences: tuple[str, ...] = ()  # text that ends an answer
    stop_tokens: tuple[str, ...] = ()  # special tokens that end an answer besides EOS


def normalize_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """One leading system message (all system texts joined), then user/assistant turns with
    same-role neighbours merged, ending with a user message. Raises InvalidRequest naming the
    offending message."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role = {role!r}: must be one of {', '.join(ROLES)}",
                field=f"messages[{index}].role",
            )
        if not isinstance(content, str):
            raise InvalidRequest(
                f"messages[{index}].content: must be text", field=f"messages[{index}].content"
            )
        if role == "system":
            system.append(content)
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[-1]["role"] != "user":
        raise InvalidRequest("messages: the last message must be from the user", field="messages")
    if turns[0]["role"] != "user":
        raise InvalidRequest(
            "messages: the conversation must start with a user message (after any system message)",
            field="messages",
        )
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return head + turns


def _split_system(messages: Sequence[Message]) -> tuple[str | None, Sequence[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def render_llama2(messages: Sequence[Message], bos: str = "<s>", eos: str = "</s>") -> str:
    system, turns = _split_system(messages)
    parts: list[str] = []
    for index, message in enumerate(turns):
        content = message["content"].strip()
        if message["role"] == "user":
            if index == 0 and system:
                content = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{content}"
            parts.append(f"{bos}[INST] {content} [/INST]")
        else:
            parts.append(f" {content} {eos}")
    return "".join(parts)


def render_llama3(messages: Sequence[Message], bos: str = "<|begin_of_text|>") -> str:
    parts = [bos]
    for message in messages:
        parts.append(
            f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n"
            f"{message['content'].strip()}<|eot_id|>"
        )
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def render_stablebeluga(messages: Sequence[Message], bos: str = "<s>", eos: str = "</s>") -> str:
    parts = [bos]
    for message in messages:
        if message["role"] == "assistant":
            parts.append(f"### Assistant:\n{message['content']}{eos}\n\n")
        else:
            parts.append(f"### {message['role'].capitalize()}:\n{message['content']}\n\n")
    parts.append("### Assistant:\n")
    return "".join(parts)


def detect_style(model_name: str, has_tokenizer_template: bool) -> ChatStyle:
    """The family from the model's name, else the tokenizer's own template, else StableBeluga's."""
    name = model_name.lower().replace("_", "-")
    if "beluga" in name:
        return "stablebeluga"
    if ("llama-3" in name or "llama3" in name) and "instruct" in name:
        return "llama3"
    if ("llama-2" in name or "llama2" in name) and "chat" in name:
        return "llama2"
    return "tokenizer" if has_tokenizer_template else "stablebeluga"


def make_template(style: ChatStyle, model_name: str, tokenizer: Any) -> ChatTemplate:
    """The template for ``style`` ("auto": detected) with the tokenizer's BOS/EOS strings."""
    own = getattr(tokenizer, "chat_template", None)
    if style == "auto":
        style = detect_style(model_name, own is not None)
    bos = tokenizer.bos_token or ""
    eos = tokenizer.eos_token or ""
    if style == "llama2":
        return ChatTemplate("llama2", lambda m: render_llama2(m, bos, eos))
    if style == "llama3":
        return ChatTemplate(
            "llama3", lambda m: render_llama3(m, bos or "<|begin_of_text|>"), (), ("<|eot_id|>",)
        )
    if style == "stablebeluga":
        return ChatTemplate(
            "stablebeluga", lambda m: render_stablebeluga(m, bos, eos), _HEADER_STOPS[:2]
        )
    if own is None:
        raise InvalidRequest(
            f"chat_template = 'tokenizer': the tokenizer of {model_name!r} has no chat template; "
            "choose llama2, llama3 or stablebeluga",
            field="chat_template",
        )

    def render_own(messages: Sequence[Message]) -> str:
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        return str(text)

    stops = tuple(marker for marker in _HEADER_STOPS if marker in own)
    return ChatTemplate("tokenizer", render_own, stops)


def fit_messages(
    messages: Sequence[Message], count_tokens: Callable[[Sequence[Message]], int], budget: int
) -> tuple[list[Message], int, int]:
    """Drop the oldest turns until the rendered prompt has at most ``budget`` tokens.

    The system prompt and the last user message are never dropped; a turn goes as a whole (a
    user message with the assistant answers after it), so the kept part still starts with a user
    message. Returns (kept messages, messages dropped, prompt tokens). Raises PromptTooLong when
    even the system prompt plus the last message do not fit.

    Dropping more turns never adds tokens, so the fewest turns to drop is found by bisection:
    O(log turns) tokenizations of at most the whole prompt, not one per dropped turn.
    """
    messages = list(messages)
    head = 1 if messages and messages[0]["role"] == "system" else 0
    # Turn boundaries: indices of user messages after the head; the last one always stays.
    starts = [i for i in range(head, len(messages)) if messages[i]["role"] == "user"]
    if not starts or starts[0] != head:
        starts = [head, *starts]

    def keep_from(turn: int) -> list[Message]:
        return messages[:head] + messages[starts[turn] :]

    tokens = count_tokens(messages)
    if tokens <= budget:
        return messages, 0, tokens
    last = len(starts) - 1
    tokens_last = count_tokens(keep_from(last))
    if tokens_last > budget:
        raise PromptTooLong(
            f"prompt is {tokens_last} tokens with only the system prompt and the last message "
            f"left; the limit is {budget} tokens (the context window minus max_new_tokens)",
            field="messages",
        )
    low, high, best = 1, last, (last, tokens_last)  # keep_from(0) is too long, (last) fits
    while low < high:
        middle = (low + high) // 2
        counted = count_tokens(keep_from(middle))
        if counted <= budget:
            high, best = middle, (middle, counted)
        else:
            low = middle + 1
    turn, counted = best
    return keep_from(turn), starts[turn] - head, counted


_OPEN, _CLOSE = "\ufdd0", "\ufdd1"  # Unicode noncharacters: never in real text


def _content_spans(
    render: Callable[[Sequence[Message]], str], messages: Sequence[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt and where each message's text lies in it, found by rendering once
    more with each text wrapped in markers (searching for the text could land in a control
    string: a user who types ``<s>`` would match the template's own BOS)."""
    marked: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        content = message["content"]
        if _OPEN in content or _CLOSE in content:
            raise InvalidRequest(
                f"messages[{index}].content: contains the noncharacter U+FDD0 or U+FDD1",
                field=f"messages[{index}].content",
            )
        text = content.strip()
        lead = content[: len(content) - len(content.lstrip())]
        trail = content[len(content.rstrip()) :]
        marked.append({**message, "content": f"{lead}{_OPEN}{text}{_CLOSE}{trail}"})
    with_markers = render(marked)
    rendered, spans, start = [], [], 0
    position = 0
    for char in with_markers:
        if char == _OPEN:
            start = position
        elif char == _CLOSE:
            spans.append((start, position))
        else:
            rendered.append(char)
            position += 1
    plain = "".join(rendered)
    if plain != render(messages) or len(spans) != len(messages):
        raise InvalidRequest(
            "messages: the chat template changed a message's text, so its special-token strings "
            "cannot be kept as text; choose the llama2, llama3 or stablebeluga template",
            field="messages",
        )
    return plain, spans


def encode_chat(
    tokenizer: Any, render: Callable[[Sequence[Message]], str], messages: Sequence[Message]
) -> tuple[list[int], int]:
    """Token ids of the chat prompt ``render(messages)`` in which only the template's own control
    strings become special tokens: a ``</s><s>[INST] <<SYS>>`` or ``<|eot_id|>`` typed by a user
    (or in a system prompt) stays text, so nobody can forge a turn. Returns (ids, number of
    special-token strings found in message text).

    Hugging Face tokenizers turn every occurrence of a special token's string into its id,
    wherever it is; so the prompt is tokenized whole (the normal tokenization, unchanged for
    ordinary text) and each special token that lies inside a message's text is replaced by the
    tokenizer model's own pieces for those characters (``</s>`` -> ``<``, ``/``, ``s``, ``>``).
    """
    rendered, spans = _content_spans(render, messages)
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    special = set(getattr(tokenizer, "all_special_ids", ())) | set(
        getattr(tokenizer, "added_tokens_encoder", {}).values()
    )
    ids: list[int] = []
    forged = 0
    for token_id, (start, end) in zip(encoded.input_ids, encoded.offset_mapping, strict=True):
        inside = any(lo <= start < hi for lo, hi in spans)
        if token_id in special and inside:
            forged += 1
            ids.extend(_as_text(tokenizer, rendered[start:end], special))
        else:
            ids.append(token_id)
    return ids, forged


def _as_text(tokenizer: Any, text: str, special: set[int]) -> list[int]:
    """``text`` (a special token's string) as ordinary tokens, bypassing the added-token match."""
    model = tokenizer.backend_tokenizer.model
    pieces = [token.id for token in model.tokenize(text)]
    if pieces and not special.intersection(pieces):
        return pieces
    # Byte-level vocabularies may hold the whole string as a piece: go character by character.
    out: list[int] = []
    for char in text:
        out.extend(token.id for token in model.tokenize(char) if token.id not in special)
    return out
