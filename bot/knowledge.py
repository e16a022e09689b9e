"""Course knowledge: Markdown/text files, PDFs (pypdf, one passage group per page) and slide decks
(python-pptx, per slide) cut into passages and ranked with BM25. A passage from a PDF or a deck
carries its page or slide number, which the answer's sources show ("exam-2024.pdf p. 2").

A lexical ranker needs no model download and handles the questions students ask about a course
(dates, rooms, assignment numbers) well, in English and Norwegian alike. Chunking and ranking are
pure; ``load_course`` is the only function that reads files.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
SUFFIXES = (*TEXT_SUFFIXES, ".pdf", ".pptx")
MAX_FILE_BYTES = 2_000_000
MAX_DOCUMENT_BYTES = 30_000_000  # PDFs and decks carry images; only their text is kept

# Function words that say nothing about which passage is meant (English and Norwegian bokmål).
STOPWORDS = frozenset(
    (  # noqa: SIM905 - a word list reads better as text
        "a an and are as at be been but by can could did do does for from had has have how i if "
        "in into is it its me my of on or our so than that the their them then there these they "
        "this to us was we were what when where which who whom why will with would you your "
        "about any all also just more most much not no some such very please tell know "
        "og i er det som en et på til av for med har de ikke den var jeg om vi men så kan du "
        "hva når hvor hvem hvilken hvilke hvordan skal vil må blir ble være meg min mitt mine "
        "deg din ditt dine oss vår vårt våre dere deres seg sin sitt sine fra eller også bare "
        "noe noen"
    ).split()
)
_WORD = re.compile(r"\w+", re.UNICODE)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# Inflection endings stripped (longest first) so "assignments", "innleveringen" and
# "eksamenen" meet "assignment", "innlevering" and "eksamen".
_ENDINGS = ("ene", "ing", "ers", "er", "en", "et", "es", "ed", "s", "e")


def stem(word: str) -> str:
    # Repeated (to a fixed point, at most three endings) so that "innlevering", "innleveringen"
    # and "innleveringer" all end up the same; a stem keeps at least three letters.
    for _ in range(3):
        for ending in _ENDINGS:
            if word.endswith(ending) and len(word) - len(ending) >= 3:
                word = word[: -len(ending)]
                break
        else:
            break
    return word


def terms(text: str) -> list[str]:
    """Lowercased, stemmed words without stopwords; numbers are kept as they are."""
    words = _WORD.findall(unicodedata.normalize("NFC", text.lower()))
    return [w if w.isdigit() else stem(w) for w in words if w not in STOPWORDS]


@dataclass(frozen=True)
class Passage:
    source: str  # file name relative to the course folder, e.g. "exams.md"
    heading: str  # the section's heading path, e.g. "Exam › Dates"; "" before any heading
    text: str
    where: str = ""  # page or slide in a PDF or deck, e.g. "p. 3" or "slide 7"

    @property
    def cited(self) -> str:
        """How the answer's sources name it: the file, with its page or slide."""
        return f"{self.source} {self.where}" if self.where else self.source


def _sections(text: str) -> Iterable[tuple[str, str]]:
    """(heading path, body) per Markdown section; text files are one section."""
    path: list[str] = []
    body: list[str] = []
    in_code = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            yield " › ".join(path), "\n".join(body)
            level = len(match[1])
            path = [*path[: level - 1], match[2]]
            body = []
        else:
            body.append(line)
    yield " › ".join(path), "\n".join(body)


def chunk_document(source: str, text: str, max_chars: int = 700) -> list[Passage]:
    """Passages of at most about ``max_chars``: sections, split at paragraphs when long."""
    passages: list[Passage] = []
    for heading, body in _sections(text):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
        current = ""
        for paragraph in paragraphs:
            if current and len(current) + len(paragraph) + 2 > max_chars:
                passages.append(Passage(source, heading, current))
                current = ""
            while len(paragraph) > max_chars:  # one huge paragraph: cut at a space
                cut = paragraph.rfind(" ", 0, max_chars)
                cut = cut if cut > max_chars // 2 else max_chars
                passages.append(Passage(source, heading, paragraph[:cut].strip()))
                paragraph = paragraph[cut:].strip()
            current = f"{current}\n\n{paragraph}" if current else paragraph
        if current:
            passages.append(Passage(source, heading, current))
    return passages


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


@dataclass
class Bm25Index:
    """Okapi BM25 over passages; the file name and heading count as part of each passage."""

    passages: Sequence[Passage]
    k1: float = 1.5
    b: float = 0.75
    analyze: Callable[[str], list[str]] = terms  # text -> index terms (words; or n-grams)
    _postings: dict[str, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    _lengths: list[int] = field(default_factory=list, repr=False)
    _idf: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for index, passage in enumerate(self.passages):
            name = Path(passage.source).stem.replace("-", " ").replace("_", " ")
            counts = Counter(self.analyze(f"{name} {passage.heading} {passage.text}"))
            self._lengths.append(sum(counts.values()))
            for term, count in counts.items():
                self._postings.setdefault(term, []).append((index, count))
        total = len(self.passages)
        for term, postings in self._postings.items():
            df = len(postings)
            self._idf[term] = math.log(1 + (total - df + 0.5) / (df + 0.5))

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The ``k`` best passages with a positive score, best first (ties: file order)."""
        if not self.passages or k <= 0:
            return []
        average = sum(self._lengths) / len(self._lengths) or 1.0
        scores: dict[int, float] = {}
        for term in set(self.analyze(query)):
            idf = self._idf.get(term)
            if idf is None:
                continue
            for index, tf in self._postings[term]:
                norm = tf + self.k1 * (1 - self.b + self.b * self._lengths[index] / average)
                scores[index] = scores.get(index, 0.0) + idf * tf * (self.k1 + 1) / norm
        best = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Hit(self.passages[i], score) for i, score in best if score > 0]


class Ranker(Protocol):
    def search(self, query: str, k: int = 3) -> list[Hit]: ...


@dataclass(frozen=True)
class CourseIndex:
    """One load of the course folder."""

    index: Bm25Index
    files: tuple[str, ...]
    skipped: tuple[str, ...]  # files that could not be read, with the reason
    took_s: float
    hybrid: Ranker | None = None  # the ranker the bot uses when set (bot/ranking.py)

    @property
    def passages(self) -> int:
        return len(self.index.passages)

    def search(self, query: str, k: int) -> list[Hit]:
        ranker = self.hybrid if self.hybrid is not None else self.index
        return ranker.search(query, k)

    def summary(self) -> str:
        text = (
            f"{len(self.files)} file(s), {self.passages} passage(s) in {self.took_s * 1000:.0f} ms"
        )
        if self.skipped:
            text += "; skipped: " + "; ".join(self.skipped)
        return text


def pdf_pages(path: Path) -> list[str]:
    """The text of each page of a PDF (pypdf; scanned pages without a text layer are empty)."""
    from pypdf import PdfReader  # imported when a course has PDFs

    return [page.extract_text() or "" for page in PdfReader(path).pages]


def deck_slides(path: Path) -> list[tuple[str, str]]:
    """(title, text) of each slide of a .pptx deck, the notes included."""
    from pptx import Presentation  # imported when a course has slides

    slides: list[tuple[str, str]] = []
    for slide in Presentation(str(path)).slides:
        title_shape = slide.shapes.title
        title = title_shape.text_frame.text.strip() if title_shape is not None else ""
        texts = [
            shape.text_frame.text.strip()
            for shape in slide.shapes
            if shape.has_text_frame and shape is not title_shape and shape.text_frame.text.strip()
        ]
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            notes = slide.notes_slide.notes_text_frame.text.strip()
            if notes:
                texts.append(notes)
        slides.append((title, "\n\n".join(texts)))
    return slides


def chunk_pages(
    source: str, pages: Sequence[tuple[str, str]], label: str, max_chars: int = 700
) -> list[Passage]:
    """Passages of each page/slide (``label`` "p." or "slide"), numbered from 1."""
    passages: list[Passage] = []
    for number, (title, text) in enumerate(pages, start=1):
        for passage in chunk_document(source, text, max_chars):
            heading = title or passage.heading
            passages.append(Passage(source, heading, passage.text, f"{label} {number}"))
    return passages


def read_document(path: Path, name: str, max_chars: int) -> list[Passage]:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return chunk_pages(name, [("", text) for text in pdf_pages(path)], "p.", max_chars)
    if suffix == ".pptx":
        return chunk_pages(name, deck_slides(path), "slide", max_chars)
    return chunk_document(name, path.read_text(encoding="utf-8"), max_chars)


def load_course(folder: Path, *, max_chars: int = 700, hybrid: bool = True) -> CourseIndex:
    """Read every .md/.markdown/.txt/.pdf/.pptx file under ``folder`` (sorted, hidden files
    skipped)."""
    started = time.perf_counter()
    passages: list[Passage] = []
    files: list[str] = []
    skipped: list[str] = []
    if not folder.is_dir():
        skipped.append(f"{folder}: not a directory")
        paths: list[Path] = []
    else:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    for path in paths:
        name = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in Path(name).parts) or not path.is_file():
            continue
        limit = MAX_FILE_BYTES if path.suffix.lower() in TEXT_SUFFIXES else MAX_DOCUMENT_BYTES
        try:
            if path.stat().st_size > limit:
                skipped.append(f"{name}: larger than {limit // 1_000_000} MB")
                continue
            found = read_document(path, name, max_chars)
        except Exception as exc:  # a broken file must not stop the others
            skipped.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        files.append(name)
        passages.extend(found)
    index = Bm25Index(passages)
    ranker = None
    if hybrid:
        from bot.ranking import HybridIndex  # ranking builds on this module

        ranker = HybridIndex(passages, index)
    took = time.perf_counter() - started
    return CourseIndex(index, tuple(files), tuple(skipped), took, ranker)
