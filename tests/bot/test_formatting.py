"""Pure Discord text: splitting, rendering with a footer, the footer itself, question checks."""

from __future__ import annotations

import pytest

from bot.formatting import (
    PLACEHOLDER,
    AnswerStats,
    check_question,
    footer,
    queue_line,
    render_answer,
    split_message,
    strip_footer,
)

pytestmark = pytest.mark.unit

PARAGRAPHS = ("alpha " * 30).strip() + "\n\n" + ("beta " * 30).strip()


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 100, ["short"]),
        ("", 100, [""]),
        ("x" * 100, 100, ["x" * 100]),
        # A paragraph break in the second half of the window wins over spaces.
        (PARAGRAPHS, 200, [("alpha " * 30).strip(), ("beta " * 30).strip()]),
        # No break at all: a hard cut, nothing lost.
        ("y" * 250, 100, ["y" * 96, "y" * 96, "y" * 58]),
        # Sentences: cut after the last full stop in the window.
        ("One. " * 30, 100, ["One. " * 19, "One. " * 11]),
    ],
)
def test_split_message(text: str, limit: int, expected: list[str]) -> None:
    chunks = split_message(text, limit)
    assert [c.strip() for c in chunks] == [e.strip() for e in expected]
    assert all(len(c) <= limit for c in chunks)


def test_split_keeps_every_word_and_respects_the_limit() -> None:
    words = [f"word{i}" for i in range(1500)]
    text = " ".join(words)
    chunks = split_message(text, 2000)
    assert all(len(c) <= 2000 for c in chunks) and len(chunks) > 1
    assert " ".join(chunks).split() == words


def test_split_closes_and_reopens_a_code_block() -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(60)) + "\n```"
    chunks = split_message("Here:\n" + code, 200)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.count("```") % 2 == 0, chunk  # every chunk renders its code as code
        assert len(chunk) <= 200
    assert chunks[1].startswith("```python\n")
    body = "".join(c.replace("```python\n", "").replace("\n```", "") for c in chunks)
    assert all(f"print({i})" in body for i in range(60))


def test_split_cut_is_stable_while_text_grows() -> None:
    text = " ".join(f"w{i}" for i in range(2000))
    first = split_message(text[:2500], 2000)[0]
    assert split_message(text, 2000)[0] == first


def test_split_refuses_a_tiny_limit() -> None:
    with pytest.raises(ValueError, match="limit 10"):
        split_message("abc", 10)


STATS = AnswerStats(ttft_s=0.4213, tokens_per_s=12.345, tokens=99, stopped_by="eos", model="m7")


@pytest.mark.parametrize(
    ("stats", "sources", "who", "expected"),
    [
        (
            STATS,
            (),
            "",
            "-# ⏱ 0.42 s to first token · 12.3 tokens/s · 99 tokens · m7 · "
            "reply to continue · 👍/👎 to rate",
        ),
        (
            AnswerStats(27.0, 1.4, 50, "length", None),
            ("exams.md", "exams.md", "labs.txt"),
            "",
            "-# ⏱ 27 s to first token · 1.4 tokens/s · 50 tokens · 📚 exams.md, labs.txt · "
            "✂️ length limit reached · reply to continue · 👍/👎 to rate",
        ),
        (
            AnswerStats(None, None, 0, "cancelled", "m7"),
            (),
            "maya",
            "-# 0 tokens · m7 · ⏹ stopped by maya · reply to continue · 👍/👎 to rate",
        ),
    ],
)
def test_footer(stats: AnswerStats, sources: tuple[str, ...], who: str, expected: str) -> None:
    assert footer(stats, sources, stopped_by_who=who) == expected


@pytest.mark.parametrize(
    ("text", "footer_line", "limit", "expected"),
    [
        ("Hello", "-# f", 100, ["Hello\n-# f"]),
        ("  ", "-# f", 100, ["-# f"]),
        ("", "", 100, [PLACEHOLDER]),
        # The footer does not fit under the last chunk: it gets a message of its own.
        ("z" * 100, "-# footer", 100, ["z" * 100, "-# footer"]),
    ],
)
def test_render_answer(text: str, footer_line: str, limit: int, expected: list[str]) -> None:
    assert render_answer(text, footer_line, limit) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("An answer.\n-# ⏱ 1 s to first token", "An answer."),
        ("No footer here", "No footer here"),
        ("Two\nlines\n-# f", "Two\nlines"),
    ],
)
def test_strip_footer(content: str, expected: str) -> None:
    assert strip_footer(content) == expected


@pytest.mark.parametrize(
    ("text", "max_chars", "needle"),
    [
        ("", 100, "Ask me a question after `!`"),
        ("   \n", 100, "Ask me a question after `!`"),
        ("x" * 10_000, 2000, "10,000 characters long; the limit is 2,000"),
        ("When is the exam?", 100, None),
    ],
)
def test_check_question(text: str, max_chars: int, needle: str | None) -> None:
    problem = check_question(text, max_chars, "!")
    if needle is None:
        assert problem is None
    else:
        assert problem is not None and needle in problem and len(problem) < 200


@pytest.mark.parametrize(
    ("position", "expected"),
    [(1, "next in line"), (2, "1 question(s) ahead"), (5, "4 question(s) ahead")],
)
def test_queue_line(position: int, expected: str) -> None:
    line = queue_line(position)
    assert line.startswith(PLACEHOLDER) and expected in line
