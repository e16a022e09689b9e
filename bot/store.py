"""The bot's SQLite database (WAL): answers with their timings, ratings, A/B pairs, threads that
are conversations, and the channel /setup chose per guild.

Ratings are committed with ``synchronous=FULL`` before the bot acknowledges them, so a rating
the bot acknowledged survives a SIGKILL (and a power cut). Methods are synchronous and fast; the
bot runs them on one dedicated thread (``AsyncStore``) so the event loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bot.prompt import Turn

T = TypeVar("T")
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,              -- the first message of the answer
    guild_id INTEGER, channel_id INTEGER NOT NULL, thread_id INTEGER,
    user_id INTEGER NOT NULL,            -- who asked
    question_message_id INTEGER,
    parent_id INTEGER REFERENCES answers(id),  -- the answer this one follows up
    pair_id INTEGER,                     -- A/B: the first answer of the pair
    variant TEXT,                        -- A/B: "A" or "B"; NULL otherwise
    question TEXT NOT NULL, answer TEXT NOT NULL, model TEXT NOT NULL,
    sources TEXT NOT NULL DEFAULT '[]',
    ttft_s REAL, tokens INTEGER NOT NULL, tokens_per_s REAL, elapsed_s REAL,
    stopped_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS answer_messages (
    message_id INTEGER PRIMARY KEY,
    answer_id INTEGER NOT NULL REFERENCES answers(id)
);
CREATE TABLE IF NOT EXISTS ratings (
    answer_id INTEGER NOT NULL REFERENCES answers(id),
    user_id INTEGER NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    rated_at REAL NOT NULL,
    PRIMARY KEY (answer_id, user_id)
);
CREATE TABLE IF NOT EXISTS threads (
    thread_id INTEGER PRIMARY KEY,
    guild_id INTEGER, parent_channel_id INTEGER, owner_id INTEGER, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS guild_channels (
    guild_id INTEGER PRIMARY KEY, channel_id INTEGER NOT NULL, set_by INTEGER, set_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_thread ON answers(thread_id, created_at);
CREATE INDEX IF NOT EXISTS answers_pair ON answers(pair_id);
"""
CSV_COLUMNS = (
    "answer_id", "created_at", "guild_id", "channel_id", "thread_id", "parent_id", "pair_id",
    "variant", "model", "question", "answer", "sources", "ttft_s", "tokens", "tokens_per_s",
    "elapsed_s", "stopped_by", "thumbs_up", "thumbs_down",
)  # fmt: skip


WRITING = "writing"  # stopped_by of an answer whose placeholder exists but which has not ended
_UPDATED = (
    "thread_id", "parent_id", "pair_id", "variant", "question", "answer", "model", "sources",
    "ttft_s", "tokens", "tokens_per_s", "elapsed_s", "stopped_by",
)  # fmt: skip


@dataclass(frozen=True)
class AnswerRecord:
    id: int
    message_ids: Sequence[int]
    guild_id: int | None
    channel_id: int
    thread_id: int | None
    user_id: int
    question_message_id: int | None
    parent_id: int | None
    question: str
    answer: str
    model: str
    sources: Sequence[str]
    ttft_s: float | None
    tokens: int
    tokens_per_s: float | None
    elapsed_s: float | None
    stopped_by: str
    pair_id: int | None = None
    variant: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class ModelStats:
    model: str
    answers: int
    up: int
    down: int
    avg_ttft_s: float | None
    avg_tokens_per_s: float | None


@dataclass(frozen=True)
class Stats:
    answers: int
    rated_answers: int
    up: int
    down: int
    per_model: list[ModelStats]
    ab_preferences: dict[str, int]  # model -> times preferred; "equal" -> ties


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a
    leading apostrophe, as OWASP advises against CSV injection; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def ab_preference(model_a: str, model_b: str, rating_a: int | None, rating_b: int | None) -> str:
    """One student's preference in one A/B pair: the model whose answer they rated higher, an
    unrated answer counting 0 (a lone 👍 on A prefers A, a lone 👎 on A prefers B); "equal"
    when both got the same rating."""
    score_a, score_b = rating_a or 0, rating_b or 0
    if score_a == score_b:
        return "equal"
    return model_a if score_a > score_b else model_b


class Store:
    """Synchronous access to the database; one connection, used from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"SQLite refused WAL mode for {path} (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        with self._lock:  # executescript manages its own transaction
            self._db.executescript(
                f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ answers
    def add_answer(self, record: AnswerRecord) -> None:
        with self._tx() as db:
            # An upsert, not INSERT OR REPLACE: a rating given while the answer was streaming
            # refers to this row, and REPLACE would delete it first.
            db.execute(
                "INSERT INTO answers (id, guild_id, channel_id, thread_id, user_id, "
                "question_message_id, parent_id, pair_id, variant, question, answer, model, "
                "sources, ttft_s, tokens, tokens_per_s, elapsed_s, stopped_by, created_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                + ", ".join(f"{column} = excluded.{column}" for column in _UPDATED),
                (
                    record.id, record.guild_id, record.channel_id, record.thread_id,
                    record.user_id, record.question_message_id, record.parent_id,
                    record.pair_id, record.variant, record.question, record.answer,
                    record.model, json.dumps(list(record.sources)), record.ttft_s,
                    record.tokens, record.tokens_per_s, record.elapsed_s, record.stopped_by,
                    record.created_at or time.time(),
                ),
            )  # fmt: skip
            db.executemany(
                "INSERT OR REPLACE INTO answer_messages (message_id, answer_id) VALUES (?, ?)",
                [(message_id, record.id) for message_id in record.message_ids],
            )

    def drop_unfinished(self, answer_id: int) -> bool:
        """Forget an answer that ended without text (failed, stopped before a word), with any
        rating given while it was a placeholder; True when there was one to forget."""
        with self._tx() as db:
            row = db.execute(
                "SELECT 1 FROM answers WHERE id = ? AND stopped_by = ?", (answer_id, WRITING)
            ).fetchone()
            if row is None:
                return False
            for table, column in (("ratings", "answer_id"), ("answer_messages", "answer_id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (answer_id,))
            db.execute("DELETE FROM answers WHERE id = ?", (answer_id,))
            return True

    def unfinished(self) -> list[AnswerRecord]:
        """Answers a crash left as placeholders ("writing"), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM answers WHERE stopped_by = ? ORDER BY created_at, id", (WRITING,)
            ).fetchall()
            return [self._record(row) for row in rows]

    def mark_interrupted(self, answer_id: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE answers SET stopped_by = 'interrupted' WHERE id = ? AND stopped_by = ?",
                (answer_id, WRITING),
            )

    def _record(self, row: sqlite3.Row) -> AnswerRecord:
        ids = [
            r[0]
            for r in self._db.execute(
                "SELECT message_id FROM answer_messages WHERE answer_id = ? ORDER BY message_id",
                (row["id"],),
            )
        ]
        values = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row
        values["sources"] = json.loads(values["sources"])
        return AnswerRecord(message_ids=ids, **values)

    def answer_for_message(self, message_id: int) -> AnswerRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT a.* FROM answers a JOIN answer_messages m ON m.answer_id = a.id "
                "WHERE m.message_id = ?",
                (message_id,),
            ).fetchone()
            return None if row is None else self._record(row)

    def history(self, answer_id: int, max_turns: int) -> list[Turn]:
        """The turns ending with ``answer_id``, following parents, oldest first."""
        turns: list[Turn] = []
        seen: set[int] = set()
        current: int | None = answer_id
        with self._lock:
            while current is not None and current not in seen and len(turns) < max_turns:
                seen.add(current)
                row = self._db.execute(
                    "SELECT question, answer, parent_id FROM answers WHERE id = ?", (current,)
                ).fetchone()
                if row is None:
                    break
                turns.append(Turn(row["question"], row["answer"]))
                current = row["parent_id"]
        return turns[::-1]

    def thread_history(self, thread_id: int, max_turns: int) -> tuple[list[Turn], int | None]:
        """The turns of a conversation thread, oldest first, and its latest answer's id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, question, answer FROM answers WHERE thread_id = ? AND "
                "(variant IS NULL OR variant = 'A') AND stopped_by NOT IN (?, 'interrupted') "
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                (thread_id, WRITING, max_turns),
            ).fetchall()
        turns = [Turn(r["question"], r["answer"]) for r in reversed(rows)]
        return turns, (rows[0]["id"] if rows else None)

    # ------------------------------------------------------------------ ratings
    def rate(self, message_id: int, user_id: int, rating: int) -> int | None:
        """Store a rating of the answer shown in ``message_id``; returns the answer id, or None
        when the message is not an answer. Committed durably before returning."""
        with self._tx() as db:
            row = db.execute(
                "SELECT answer_id FROM answer_messages WHERE message_id = ?", (message_id,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "INSERT INTO ratings (answer_id, user_id, rating, rated_at) VALUES (?,?,?,?) "
                "ON CONFLICT (answer_id, user_id) DO UPDATE SET rating = excluded.rating, "
                "rated_at = excluded.rated_at",
                (row[0], user_id, rating, time.time()),
            )
            return int(row[0])

    def unrate(self, message_id: int, user_id: int, rating: int) -> int | None:
        """Remove a rating when the user takes that reaction back."""
        with self._tx() as db:
            row = db.execute(
                "SELECT answer_id FROM answer_messages WHERE message_id = ?", (message_id,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "DELETE FROM ratings WHERE answer_id = ? AND user_id = ? AND rating = ?",
                (row[0], user_id, rating),
            )
            return int(row[0])

    def ratings(self, answer_id: int) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT user_id, rating FROM ratings WHERE answer_id = ?", (answer_id,)
            ).fetchall()
        return {r["user_id"]: r["rating"] for r in rows}

    # ------------------------------------------------------------------ threads, channels
    def add_thread(
        self, thread_id: int, guild_id: int | None, parent_id: int, owner_id: int
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO threads VALUES (?,?,?,?,?)",
                (thread_id, guild_id, parent_id, owner_id, time.time()),
            )

    def is_thread(self, thread_id: int) -> bool:
        with self._lock:
            query = "SELECT 1 FROM threads WHERE thread_id = ?"
            return self._db.execute(query, (thread_id,)).fetchone() is not None

    def set_channel(self, guild_id: int, channel_id: int | None, set_by: int) -> None:
        with self._tx() as db:
            if channel_id is None:
                db.execute("DELETE FROM guild_channels WHERE guild_id = ?", (guild_id,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO guild_channels VALUES (?,?,?,?)",
                    (guild_id, channel_id, set_by, time.time()),
                )

    def channels(self) -> dict[int, int]:
        with self._lock:
            rows = self._db.execute("SELECT guild_id, channel_id FROM guild_channels").fetchall()
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------------ reporting
    def stats(self) -> Stats:
        with self._lock:
            db = self._db
            answers = db.execute(
                "SELECT COUNT(*) FROM answers WHERE stopped_by != ?", (WRITING,)
            ).fetchone()[0]
            up, down, rated = db.execute(
                "SELECT COALESCE(SUM(rating = 1), 0), COALESCE(SUM(rating = -1), 0), "
                "COUNT(DISTINCT answer_id) FROM ratings"
            ).fetchone()
            per_model = [
                ModelStats(r[0], r[1], r[2] or 0, r[3] or 0, r[4], r[5])
                for r in db.execute(
                    "SELECT a.model, COUNT(DISTINCT a.id), "
                    "(SELECT COUNT(*) FROM ratings r JOIN answers b ON b.id = r.answer_id "
                    " WHERE b.model = a.model AND r.rating = 1), "
                    "(SELECT COUNT(*) FROM ratings r JOIN answers b ON b.id = r.answer_id "
                    " WHERE b.model = a.model AND r.rating = -1), "
                    "AVG(a.ttft_s), AVG(a.tokens_per_s) FROM answers a WHERE a.stopped_by != ? "
                    "GROUP BY a.model ORDER BY a.model",
                    (WRITING,),
                )
            ]
            # Every (pair, student) who rated A, B or both; a missing rating counts as 0.
            pairs = db.execute(
                "SELECT a.model, b.model, "
                "(SELECT rating FROM ratings WHERE answer_id = a.id AND user_id = u.user_id), "
                "(SELECT rating FROM ratings WHERE answer_id = b.id AND user_id = u.user_id) "
                "FROM answers a JOIN answers b ON b.pair_id = a.pair_id AND b.variant = 'B' "
                "JOIN (SELECT DISTINCT answer_id, user_id FROM ratings) u "
                "ON u.answer_id IN (a.id, b.id) WHERE a.variant = 'A' "
                "GROUP BY a.id, u.user_id"
            ).fetchall()
        preferences: dict[str, int] = {}
        for model_a, model_b, rating_a, rating_b in pairs:
            key = ab_preference(model_a, model_b, rating_a, rating_b)
            preferences[key] = preferences.get(key, 0) + 1
        return Stats(answers, rated, up, down, per_model, preferences)

    def export_csv(self) -> str:
        """Every answer with its timings and rating counts, as CSV text."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        with self._lock:
            rows = self._db.execute(
                "SELECT a.id, a.created_at, a.guild_id, a.channel_id, a.thread_id, a.parent_id, "
                "a.pair_id, a.variant, a.model, a.question, a.answer, a.sources, a.ttft_s, "
                "a.tokens, a.tokens_per_s, a.elapsed_s, a.stopped_by, "
                "COALESCE(SUM(r.rating = 1), 0), COALESCE(SUM(r.rating = -1), 0) "
                "FROM answers a LEFT JOIN ratings r ON r.answer_id = a.id "
                "GROUP BY a.id ORDER BY a.created_at, a.id"
            ).fetchall()
        for row in rows:
            writer.writerow([csv_cell(value) for value in row])
        return out.getvalue()


class AsyncStore:
    """Runs ``Store`` methods on one dedicated thread: ``await store.run(Store.rate, ...)``."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bot-db")

    async def run(self, method: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, method, self.sync, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.sync.close()
