"""Prompt assembly and trimming to the context window (pure; a word counter stands in for the
tokenizer)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bot.knowledge import Passage
from bot.prompt import (
    NOTES_HEADER,
    ChatMessage,
    PromptTooLong,
    Turn,
    build_messages,
    plan_prompt,
    select_passages,
)

pytestmark = pytest.mark.unit

EXAM = Passage("exams.md", "Exam › Date", "The exam is on 3 June.")
LABS = Passage("labs.txt", "", "Labs are on Wednesdays.")


def words(messages: Sequence[ChatMessage]) -> int:
    return sum(len(m["content"].split()) + 2 for m in messages)


def test_messages_carry_instructions_passages_turns_and_question() -> None:
    messages = build_messages(
        "Be brief.", [EXAM, LABS], [Turn("Hi?", "Hello.")], "When is the exam?"
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("Be brief.\n\n" + NOTES_HEADER)
    assert "[exams.md › Exam › Date]\nThe exam is on 3 June." in system
    assert "[labs.txt]\nLabs are on Wednesdays." in system
    assert messages[1:] == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "When is the exam?"},
    ]


def test_no_system_message_without_instructions_or_passages() -> None:
    assert build_messages("", [], [], "q") == [{"role": "user", "content": "q"}]


@pytest.mark.parametrize(
    ("budget", "turns_used", "passages_kept", "truncated"),
    [
        (1000, 3, 2, False),  # everything fits
        (70, 1, 2, False),  # the two oldest turns go first
        (50, 0, 2, False),  # then every turn
        (44, 0, 1, False),  # then the lowest-ranked passage
        (15, 0, 0, True),  # then the question is shortened
    ],
)
def test_trimming_order(budget: int, turns_used: int, passages_kept: int, truncated: bool) -> None:
    history = [Turn(f"question {i} " * 3, f"answer {i} " * 3) for i in range(3)]
    plan = plan_prompt(
        system_prompt="Be brief.",
        passages=[EXAM, LABS],
        history=history,
        question="When is the exam " + "really " * 10,
        count_tokens=words,
        token_budget=budget,
    )
    assert plan.prompt_tokens <= budget
    assert plan.turns_used == turns_used and plan.turns_dropped == 3 - turns_used
    assert len(plan.sources) == passages_kept
    assert plan.question_truncated is truncated
    if turns_used:  # the newest turns are the ones kept
        assert plan.messages[-3]["content"] == history[-1].question
    if truncated:
        assert plan.messages[-1]["content"].endswith(" …")


def test_instructions_that_cannot_fit_are_a_configuration_error() -> None:
    with pytest.raises(PromptTooLong, match="system_prompt"):
        plan_prompt(
            system_prompt="word " * 50,
            passages=[],
            history=[],
            question="q",
            count_tokens=words,
            token_budget=10,
        )


def test_select_passages_keeps_rank_order_within_the_character_budget() -> None:
    big = Passage("big.md", "", "x" * 500)
    assert select_passages([EXAM, big, LABS], 200) == [EXAM, LABS]
    assert select_passages([EXAM, LABS], 0) == []
