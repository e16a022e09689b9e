"""Course knowledge: chunking, BM25 ranking, and the top-3 hit rate on a question set.

The question set mixes English and Norwegian and mostly avoids the files' exact wording. A hit
means a file that holds the answer is among the files of the top three passages. The measured
rate is written to artifacts/bot/knowledge-hit-rate.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.knowledge import Bm25Index, Passage, chunk_document, load_course, stem, terms
from bot.prompt import plan_prompt
from tests.bot.documents import write_deck, write_pdf

pytestmark = pytest.mark.unit

COURSE = Path(__file__).parent / "course"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "bot"
MIN_HIT_RATE = 0.9

# (question, files that answer it)
QUESTIONS: list[tuple[str, set[str]]] = [
    ("When is the exam?", {"exams.md", "praktisk-info.md"}),
    ("Where is the written exam held?", {"exams.md", "praktisk-info.md"}),
    ("Can I bring my laptop to the exam?", {"exams.md", "praktisk-info.md"}),
    ("How is the final grade computed?", {"exams.md", "project.md"}),
    ("When is the re-sit in August and how do I register?", {"exams.md"}),
    ("What is the deadline for assignment 3?", {"assignments.md"}),
    ("When must the first assignment be handed in?", {"assignments.md"}),
    ("What do we build in the fetch and async/await assignment?", {"assignments.md"}),
    ("Are late hand-ins accepted if I am ill?", {"assignments.md", "praktisk-info.md"}),
    ("How many mandatory assignments are there?", {"assignments.md"}),
    ("How many students can be in a project group?", {"project.md"}),
    ("When is the project demo?", {"project.md"}),
    ("How long may the project report be?", {"project.md"}),
    ("Who is the course coordinator?", {"course.md"}),
    ("Which textbook should I read?", {"course.md"}),
    ("What time are the lectures on Monday?", {"course.md"}),
    ("Which Python version do I need?", {"course.md"}),
    ("Where can I get help with the assignments?", {"labs.txt", "assignments.md"}),
    ("When are the lab sessions?", {"labs.txt"}),
    ("How many credits is the course worth?", {"course.md"}),
    ("Når er eksamen?", {"praktisk-info.md", "exams.md"}),
    ("Hvilke hjelpemidler er tillatt på eksamen?", {"praktisk-info.md", "exams.md"}),
    ("Hva skjer hvis jeg er syk på eksamensdagen?", {"praktisk-info.md"}),
    ("Hvor leverer jeg innleveringene?", {"praktisk-info.md", "assignments.md"}),
    ("Er det oppmøteplikt på forelesningene?", {"praktisk-info.md"}),
    # Paraphrases sharing few words with the files.
    ("What is the Flask homework due date?", {"assignments.md"}),
    ("Do I have to show up to the labs?", {"labs.txt", "praktisk-info.md"}),
    ("Is the exam open book?", {"exams.md", "praktisk-info.md"}),
    ("How do groups sign up for the project?", {"project.md"}),
    ("Which editor and browser should I install?", {"course.md"}),
    ("Who can I email to get more time for a hand-in?", {"assignments.md"}),
]


def test_markdown_is_cut_into_sections_with_heading_paths() -> None:
    text = (
        "intro line\n\n# Exam\n\n## Date\n\n3 June.\n\n## Aids\n\nNone.\n```\n# not a heading\n```"
    )
    passages = chunk_document("exams.md", text)
    assert [(p.heading, p.text) for p in passages] == [
        ("", "intro line"),
        ("Exam › Date", "3 June."),
        ("Exam › Aids", "None.\n```\n# not a heading\n```"),
    ]


def test_long_sections_are_split_at_paragraphs() -> None:
    body = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(10))
    passages = chunk_document("long.md", "# Long\n\n" + body, max_chars=500)
    assert len(passages) > 1
    assert all(len(p.text) <= 500 for p in passages)
    assert all(p.heading == "Long" for p in passages)


@pytest.mark.parametrize(
    ("word", "base"),
    [
        ("assignments", "assignment"),
        ("innleveringen", "innlevering"),
        ("innleveringer", "innlevering"),
        ("eksamenen", "eksamen"),
        ("deadlines", "deadline"),
        ("exams", "exam"),
        ("lectures", "lecture"),
    ],
)
def test_stemming_meets_inflected_forms(word: str, base: str) -> None:
    assert stem(word) == stem(base)
    assert len(stem(word)) >= 3


def test_terms_drop_stopwords_and_keep_numbers() -> None:
    assert terms("When is the deadline for assignment 3?") == ["deadlin", "assignment", "3"]


def test_bm25_prefers_rare_matching_terms() -> None:
    index = Bm25Index(
        [
            Passage("a.md", "", "the exam is in june in the hall"),
            Passage("b.md", "", "the lab is on wednesday"),
            Passage("c.md", "", "the lab and the exam and the lab again"),
        ]
    )
    assert [h.passage.source for h in index.search("wednesday lab", 3)] == ["b.md", "c.md"]
    assert index.search("nothing matches zzz", 3) == []
    assert Bm25Index([]).search("exam", 3) == []


def test_load_course_reads_markdown_and_text_and_skips_others(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\nalpha", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta", encoding="utf-8")
    (tmp_path / "c.docx").write_bytes(b"PK")  # not a format the bot reads
    (tmp_path / ".hidden.md").write_text("secret", encoding="utf-8")
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe\xfa")
    loaded = load_course(tmp_path)
    assert loaded.files == ("a.md", "sub/b.txt")
    assert loaded.passages == 2
    assert len(loaded.skipped) == 1 and loaded.skipped[0].startswith("bad.md")
    assert "2 file(s), 2 passage(s)" in loaded.summary()


def test_top3_hit_rate_on_the_course_question_set() -> None:
    course = load_course(COURSE)
    assert len(course.files) == 6 and not course.skipped
    misses = []
    top1 = 0
    for question, wanted in QUESTIONS:
        found = [hit.passage.source for hit in course.search(question, 3)]
        top1 += bool(found) and found[0] in wanted
        if not wanted & set(found):
            misses.append((question, sorted(wanted), found))
    rate = 1 - len(misses) / len(QUESTIONS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report = {
        "questions": len(QUESTIONS),
        "top3_hits": len(QUESTIONS) - len(misses),
        "top3_hit_rate": round(rate, 3),
        "top1_hit_rate": round(top1 / len(QUESTIONS), 3),
        "passages": course.passages,
        "misses": misses,
    }
    (ARTIFACTS / "knowledge-hit-rate.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"top-3 hit rate: {rate:.2f} ({report['top3_hits']}/{len(QUESTIONS)})")
    assert rate >= MIN_HIT_RATE, misses


def test_pdfs_and_slides_are_indexed_with_page_and_slide_numbers(tmp_path: Path) -> None:
    write_pdf(
        tmp_path / "exam-2023.pdf",
        [
            ["Exam 2023 in Web Development", "Answer all tasks."],
            ["Task 2: Explain the difference between GET and POST requests."],
        ],
    )
    write_deck(
        tmp_path / "lecture-04.pptx",
        [("Lecture 4: CSS", "Selectors and specificity"), ("Flexbox", "justify-content aligns")],
    )
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    course = load_course(tmp_path)
    assert course.files == ("exam-2023.pdf", "lecture-04.pptx")
    assert [s.split(":")[0] for s in course.skipped] == ["broken.pdf"]
    hit = course.search("difference between GET and POST", 1)[0].passage
    assert (hit.source, hit.where, hit.cited) == ("exam-2023.pdf", "p. 2", "exam-2023.pdf p. 2")
    assert "GET and POST" in hit.text
    slide = course.search("justify-content flexbox", 1)[0].passage
    assert (slide.cited, slide.heading) == ("lecture-04.pptx slide 2", "Flexbox")
    plan = plan_prompt(
        system_prompt="",
        passages=[hit, slide],
        history=[],
        question="q",
        count_tokens=lambda messages: 1,
        token_budget=100,
    )
    assert plan.sources == ["exam-2023.pdf p. 2", "lecture-04.pptx slide 2"]
