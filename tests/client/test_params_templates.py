"""Pure parts of the client: parameter bounds, chat templates, trimming to the context window."""

from __future__ import annotations

import pytest

from client.errors import InvalidRequest, PromptTooLong
from client.params import GenerationParams
from client.templates import (
    detect_style,
    fit_messages,
    normalize_messages,
    render_llama2,
    render_llama3,
    render_stablebeluga,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("values", "field", "limit"),
    [
        ({"max_new_tokens": 5000}, "max_new_tokens", "4096"),
        ({"max_new_tokens": 0}, "max_new_tokens", "1"),
        ({"temperature": 2.5}, "temperature", "2"),
        ({"top_p": 0}, "top_p", "0"),
        ({"top_k": 1001}, "top_k", "1000"),
        ({"repetition_penalty": 3}, "repetition_penalty", "2"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "4"),
        ({"stop": ["x" * 65]}, "stop", "64"),
        ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens", "8"),
    ],
)
def test_bad_params_name_the_field_and_the_limit(values, field, limit):
    with pytest.raises(InvalidRequest) as caught:
        GenerationParams.build(**values)
    assert field in str(caught.value)
    assert limit in str(caught.value)


def test_sampling_knobs_only_when_sampling():
    greedy = GenerationParams(temperature=0.7, top_k=5).generate_kwargs()
    assert greedy == {"do_sample": False, "repetition_penalty": 1.0}
    sampled = GenerationParams(do_sample=True, temperature=0.7, top_k=5).generate_kwargs()
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_k"] == 5
    # temperature 0 means greedy even when sampling was asked for (OpenAI's convention)
    assert not GenerationParams(do_sample=True, temperature=0).generate_kwargs()["do_sample"]
    assert GenerationParams.build(stop="END").stop == ("END",)


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is a block?"},
]


def test_llama2_format():
    assert render_llama2(CHAT) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s>"
        "<s>[INST] What is a block? [/INST]"
    )


def test_llama3_format():
    assert render_llama3(CHAT) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is a block?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_stablebeluga_format():
    assert render_stablebeluga(CHAT) == (
        "<s>### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\nHello.</s>\n\n"
        "### User:\nWhat is a block?\n\n### Assistant:\n"
    )


@pytest.mark.parametrize(
    ("name", "has_own", "style"),
    [
        ("petals-team/StableBeluga2", False, "stablebeluga"),
        ("meta-llama/Meta-Llama-3-70B-Instruct", True, "llama3"),
        ("meta-llama/Llama-2-70b-chat-hf", True, "llama2"),
        ("/cache/models/tiny-llama-abc", True, "tokenizer"),
        ("some/base-model", False, "stablebeluga"),
    ],
)
def test_style_detection(name, has_own, style):
    assert detect_style(name, has_own) == style


def test_normalize_merges_system_and_same_role_neighbours():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "s1"},
        {"role": "user", "content": "b"},
        {"role": "system", "content": "s2"},
    ]
    assert normalize_messages(messages) == [
        {"role": "system", "content": "s1\n\ns2"},
        {"role": "user", "content": "a\n\nb"},
    ]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "messages"),
        ([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], "messages"),
        ([], "messages"),
    ],
)
def test_normalize_rejects_what_no_template_can_render(messages, field):
    with pytest.raises(InvalidRequest) as caught:
        normalize_messages(messages)
    assert caught.value.field == field


def _turns(n: int) -> list[dict[str, str]]:
    out = [{"role": "system", "content": "S" * 10}]
    for i in range(n):
        out += [
            {"role": "user", "content": f"q{i}" * 5},
            {"role": "assistant", "content": "a" * 10},
        ]
    return [*out, {"role": "user", "content": "last"}]


def _count(messages) -> int:
    return sum(len(m["content"]) for m in messages)


def test_trimming_drops_oldest_whole_turns_and_keeps_the_system_prompt():
    messages = _turns(4)  # system 10 + 4 * (10 + 10) + 4 = 94
    kept, dropped, tokens = fit_messages(messages, _count, budget=60)
    assert kept[0] == messages[0]
    assert kept[-1] == messages[-1]
    assert kept[1]["role"] == "user"
    assert dropped == 4 and tokens == 54
    assert [m["content"] for m in kept[1:3]] == ["q2" * 5, "a" * 10]


def test_trimming_leaves_a_fitting_prompt_alone():
    messages = _turns(2)
    assert fit_messages(messages, _count, budget=1000) == (messages, 0, _count(messages))


def test_trimming_cannot_drop_the_system_prompt_or_the_question():
    with pytest.raises(PromptTooLong) as caught:
        fit_messages(_turns(3), _count, budget=12)
    assert "12 tokens" in str(caught.value)
