"""The bot's course ranker: BM25 on words fused with BM25 on character 4-grams, after a small
Norwegian-to-English glossary of course words widened the query.

Why each part (figures in bot/README.md, from bench/retrieval_bench.py):
- Character 4-grams match what word stems miss: compounds ("eksamensoppgaver" ~ "exam"),
  cognates across the two languages ("injeksjon" ~ "injection", "konflikt" ~ "conflict") and
  inflections the crude stemmer does not know.
- The glossary lets a Norwegian question find English notes (and the other way round) for the
  words a course is built from; it is vocabulary, not answers, and needs no model download.
- Reciprocal rank fusion (k=60) joins the two rankings without tuning their score scales.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from bot.knowledge import STOPWORDS, Bm25Index, Hit, Passage

NGRAM = 4
FUSION_K = 60.0
CANDIDATES = 30  # from each ranking before fusing

# Norwegian course vocabulary -> English (matched on word starts, so inflections follow).
GLOSSARY: dict[str, str] = {
    "eksamen": "exam", "konte": "re-sit exam", "kontinuasjon": "re-sit exam",
    "innlever": "hand-in assignment", "oblig": "mandatory assignment", "oppgave": "task assignment",
    "frist": "deadline", "utsatt": "extension", "sykdom": "ill doctor's note", "syk": "ill",
    "legeerklæring": "doctor's note", "hjelpemidl": "aids allowed", "studiepoeng": "credits ECTS",
    "forelesning": "lecture", "emne": "course", "emneansvarlig": "course coordinator",
    "gruppe": "group", "rapport": "report", "løsningsforslag": "solution guide",
    "karakter": "grade", "vurdering": "grading", "fusk": "cheating plagiarism",
    "samarbeid": "collaborate together", "tilrettelegging": "accommodation",
    "nettleser": "browser", "nettside": "web page", "side": "page", "bilde": "image",
    "skjermleser": "screen reader", "tilgjengelig": "accessible accessibility alt",
    "kolonne": "column", "bred": "width", "mal": "template", "liste": "list loop",
    "hente": "fetch get", "skjema": "form", "knapp": "button", "tekst": "text",
    "database": "database", "tabell": "table", "beskytte": "protect", "passord": "password",
    "hemmelig": "secret", "nøkkel": "key", "innlogget": "logged in session cookie",
    "tilstandsløs": "stateless", "konflikt": "conflict merge", "virtuelt": "virtual",
    "miljø": "environment venv", "installer": "install", "programmer": "programming",
    "linje": "lines", "test": "test pytest", "kjør": "run", "rom": "room",
    "søk": "apply", "ekstra": "extra", "tid": "time", "kode": "code", "feil": "error",
    "lage": "make create", "vise": "show display", "sende": "send submit",
}  # fmt: skip
_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return [
        w for w in _WORD.findall(unicodedata.normalize("NFC", text.lower())) if w not in STOPWORDS
    ]


def ngrams(text: str) -> list[str]:
    """Character 4-grams of each word, padded so word starts and ends count."""
    grams: list[str] = []
    for word in words(text):
        padded = f" {word} "
        if len(padded) <= NGRAM:
            grams.append(padded)
        else:
            grams.extend(padded[i : i + NGRAM] for i in range(len(padded) - NGRAM + 1))
    return grams


def expand(query: str) -> str:
    """The query plus the English of its Norwegian course words."""
    extra = [
        english
        for word in words(query)
        for norwegian, english in GLOSSARY.items()
        if word.startswith(norwegian)
    ]
    return f"{query} {' '.join(extra)}" if extra else query


class HybridIndex:
    """Word BM25 + 4-gram BM25, fused by reciprocal rank, on a glossary-widened query."""

    def __init__(
        self,
        passages: Sequence[Passage],
        words_index: Bm25Index | None = None,
        *,
        glossary: bool = True,
    ) -> None:
        self.passages = passages
        self.glossary = glossary
        self.words = words_index or Bm25Index(passages)
        self.grams = Bm25Index(passages, analyze=ngrams)
        self._position = {id(p): i for i, p in enumerate(passages)}

    def search(self, query: str, k: int = 3) -> list[Hit]:
        if not self.passages or k <= 0:
            return []
        widened = expand(query) if self.glossary else query
        fused: dict[int, float] = {}
        for ranking in (
            self.words.search(widened, CANDIDATES),
            self.grams.search(widened, CANDIDATES),
        ):
            for rank, hit in enumerate(ranking):
                index = self._position[id(hit.passage)]
                fused[index] = fused.get(index, 0.0) + 1.0 / (FUSION_K + rank + 1)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Hit(self.passages[i], score) for i, score in best]
