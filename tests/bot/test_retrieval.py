"""The retrieval evaluation set (bench/retrieval: 50 paraphrased English and Norwegian
questions over 22 course files with a PDF and a slide deck): the bot's hybrid ranker must
clearly beat BM25 alone and a random ranker on top-3 hits, and stay good on the older question
set in test_knowledge.py, which it was not tuned on."""

from __future__ import annotations

import pytest

from bench.retrieval_bench import COURSE, evaluate, load_questions
from bot.knowledge import load_course
from bot.ranking import expand, ngrams

pytestmark = pytest.mark.unit


def test_evaluation_set_is_big_and_bilingual() -> None:
    questions = load_questions()
    course = load_course(COURSE)
    assert len(questions) >= 40 and len(course.files) >= 20 and not course.skipped
    assert {"old-exam-2023.pdf", "lecture-09-testing.pptx"} <= set(course.files)
    assert sum(q.lang == "no" for q in questions) >= 15
    assert sum(q.lang == "en" for q in questions) >= 15
    assert {name for q in questions for name in q.files} == set(course.files)


def test_hybrid_ranker_beats_bm25_and_random() -> None:
    report = evaluate(load_course(COURSE), load_questions(), k=3)
    hybrid, bm25 = report["hybrid"]["hit_rate"], report["bm25"]["hit_rate"]
    assert report["random"] < 0.3
    assert hybrid >= bm25 + 0.1, report
    assert report["bm25+4grams"]["hit_rate"] > bm25  # the part that needs no glossary helps too
    assert report["hybrid"]["by_language"]["no"] > report["bm25"]["by_language"]["no"]


def test_glossary_and_ngrams() -> None:
    assert "exam" in expand("Når er eksamensdagen?")
    assert expand("When is the exam?") == "When is the exam?"
    assert " inj" in ngrams("injeksjon") and "sjon" in ngrams("injeksjon")
    assert ngrams("og js") == [" js "]  # stopwords go; short words stay whole
