"""Retrieval quality of the course bot: top-k hit rate of each ranker on the evaluation set in
bench/retrieval (50 paraphrased questions, English and Norwegian, over 22 course files with a
PDF and a slide deck), against the exact expectation of a random ranker.

    .venv/bin/python -m bench.retrieval_bench [--k 3]

A hit: a file that answers the question is among the files of the k best passages. Prints a
table and writes bench/results/retrieval.json. Pure CPU, a second or two.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.knowledge import CourseIndex, Hit, Passage, load_course

HERE = Path(__file__).resolve().parent / "retrieval"
COURSE = HERE / "course"
QUESTIONS = HERE / "questions.json"
Search = Callable[[str, int], Sequence[Hit]]


@dataclass(frozen=True)
class Question:
    text: str
    lang: str
    files: frozenset[str]


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Question(q["q"], q["lang"], frozenset(q["files"])) for q in data["questions"]]


def hit_rate(search: Search, questions: Sequence[Question], k: int = 3) -> tuple[float, list[str]]:
    """(share of questions with a wanted file in the top k, the missed questions)."""
    misses = []
    for question in questions:
        found = {hit.passage.source for hit in search(question.text, k)}
        if not found & question.files:
            misses.append(question.text)
    return 1 - len(misses) / len(questions), misses


def random_hit_rate(passages: Sequence[Passage], questions: Sequence[Question], k: int) -> float:
    """The exact expected hit rate of k passages drawn at random (no model, no luck)."""
    total = len(passages)
    rates = []
    for question in questions:
        wanted = sum(p.source in question.files for p in passages)
        rates.append(1 - math.comb(total - wanted, k) / math.comb(total, k))
    return sum(rates) / len(rates)


def evaluate(course: CourseIndex, questions: Sequence[Question], k: int) -> dict[str, Any]:
    from bot.ranking import HybridIndex, expand

    passages = course.index.passages
    no_glossary = HybridIndex(passages, course.index, glossary=False)
    rankers: dict[str, Search] = {
        "bm25": course.index.search,
        # Ablations: what each part of the hybrid adds.
        "bm25+glossary": lambda query, k: course.index.search(expand(query), k),
        "bm25+4grams": no_glossary.search,
        "hybrid": HybridIndex(passages, course.index).search,
    }
    report: dict[str, Any] = {
        "files": len(course.files),
        "passages": course.passages,
        "questions": len(questions),
        "k": k,
        "random": round(random_hit_rate(course.index.passages, questions, k), 3),
    }
    for name, search in rankers.items():
        overall, misses = hit_rate(search, questions, k)
        per_lang = {
            lang: round(hit_rate(search, [q for q in questions if q.lang == lang], k)[0], 3)
            for lang in sorted({q.lang for q in questions})
        }
        report[name] = {"hit_rate": round(overall, 3), "by_language": per_lang, "misses": misses}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=3, help="passages per question (default 3)")
    args = parser.parse_args(argv)
    from bench.common import write_results

    course = load_course(COURSE)
    report = evaluate(course, load_questions(), args.k)
    print(
        f"{report['questions']} questions, {report['files']} files, {report['passages']} passages"
    )
    print(f"top-{args.k} hit rate  random {report['random']:.3f}")
    for name in ("bm25", "bm25+glossary", "bm25+4grams", "hybrid"):
        if name in report:
            line = report[name]
            langs = ", ".join(f"{lang} {rate:.3f}" for lang, rate in line["by_language"].items())
            print(f"{'':17}{name:<14}{line['hit_rate']:.3f} ({langs})")
    print(f"wrote {write_results('retrieval', report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
