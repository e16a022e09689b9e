"""The SQLite store: WAL, answers and their messages, conversation chains, ratings, A/B
preferences, CSV export."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest

from bot.prompt import Turn
from bot.store import CSV_COLUMNS, Store
from tests.bot.helpers import record

pytestmark = pytest.mark.bot


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "bot.sqlite3")


def test_database_is_in_wal_mode(store: Store, tmp_path: Path) -> None:
    store.add_answer(record(10))
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "bot.sqlite3-wal").exists()


def test_answers_are_found_by_any_of_their_messages(store: Store) -> None:
    store.add_answer(record(10, message_ids=[10, 11, 12], sources=["exams.md"]))
    found = store.answer_for_message(12)
    assert found is not None and found.id == 10 and list(found.message_ids) == [10, 11, 12]
    assert list(found.sources) == ["exams.md"]
    assert store.answer_for_message(99) is None


def test_history_follows_parents_oldest_first_and_is_capped(store: Store) -> None:
    store.add_answer(record(10))
    store.add_answer(record(20, parent_id=10))
    store.add_answer(record(30, parent_id=20))
    assert store.history(30, 10) == [Turn("q10", "a10"), Turn("q20", "a20"), Turn("q30", "a30")]
    assert store.history(30, 2) == [Turn("q20", "a20"), Turn("q30", "a30")]


def test_thread_history(store: Store) -> None:
    store.add_thread(500, 1, 2, 7)
    assert store.is_thread(500) and not store.is_thread(501)
    store.add_answer(record(10, thread_id=500))
    store.add_answer(record(20, thread_id=500))
    store.add_answer(record(30, thread_id=None))
    turns, last = store.thread_history(500, 10)
    assert turns == [Turn("q10", "a10"), Turn("q20", "a20")] and last == 20


def test_ratings_upsert_and_removal(store: Store) -> None:
    store.add_answer(record(10, message_ids=[10, 11]))
    assert store.rate(11, user_id=1, rating=1) == 10
    assert store.rate(10, user_id=1, rating=-1) == 10  # changed their mind
    assert store.rate(10, user_id=2, rating=1) == 10
    assert store.rate(555, user_id=1, rating=1) is None  # not an answer
    assert store.ratings(10) == {1: -1, 2: 1}
    assert store.unrate(10, user_id=2, rating=-1) == 10  # not the rating they gave: kept
    assert store.ratings(10) == {1: -1, 2: 1}
    store.unrate(10, user_id=2, rating=1)
    assert store.ratings(10) == {1: -1}


def test_stats_compare_ab_answers_per_student(store: Store) -> None:
    store.add_answer(record(10, pair_id=10, variant="A", model="big"))
    store.add_answer(record(11, pair_id=10, variant="B", model="small"))
    store.add_answer(record(20, pair_id=20, variant="A", model="small"))
    store.add_answer(record(21, pair_id=20, variant="B", model="big"))
    store.rate(10, 1, 1)
    store.rate(11, 1, -1)  # student 1 prefers big
    store.rate(10, 2, 1)
    store.rate(11, 2, 1)  # student 2: equal
    store.rate(20, 3, -1)
    store.rate(21, 3, 1)  # student 3 prefers big (as B)
    store.rate(20, 4, 1)  # student 4 rated only A (small) up: prefers small
    store.rate(11, 5, -1)  # student 5 rated only B (small) down: prefers big
    stats = store.stats()
    assert (stats.answers, stats.rated_answers, stats.up, stats.down) == (4, 4, 5, 3)
    assert stats.ab_preferences == {"big": 3, "small": 1, "equal": 1}
    per_model = {m.model: (m.answers, m.up, m.down) for m in stats.per_model}
    assert per_model == {"big": (2, 3, 0), "small": (2, 2, 3)}


def test_placeholder_is_rateable_and_unfinished_until_it_ends(store: Store) -> None:
    store.add_answer(record(30, answer="", tokens=0, stopped_by="writing"))
    assert store.rate(30, 1, 1) == 30  # a rating during streaming is stored
    assert store.stats().answers == 0
    assert [r.id for r in store.unfinished()] == [30]
    store.add_answer(record(30, answer="done"))  # the upsert keeps the rating
    assert store.ratings(30) == {1: 1} and store.unfinished() == []
    store.add_answer(record(31, answer="", tokens=0, stopped_by="writing"))
    store.rate(31, 1, -1)
    assert store.drop_unfinished(31) and store.answer_for_message(31) is None
    assert not store.drop_unfinished(30)  # a finished answer stays
    store.add_answer(record(32, answer="", tokens=0, stopped_by="writing", thread_id=5))
    assert store.thread_history(5, 8) == ([], None)  # a placeholder is no earlier turn
    store.mark_interrupted(32)
    assert store.unfinished() == [] and store.answer_for_message(32) is not None


def test_csv_export_has_one_row_per_answer_with_rating_counts(store: Store) -> None:
    store.add_answer(record(10, question='a "quoted",\nmultiline question'))
    store.add_answer(record(20))
    store.rate(10, 1, 1)
    store.rate(10, 2, -1)
    store.rate(10, 3, 1)
    rows = list(csv.DictReader(io.StringIO(store.export_csv())))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["answer_id"], r["thumbs_up"], r["thumbs_down"]) for r in rows] == [
        ("10", "2", "1"),
        ("20", "0", "0"),
    ]
    assert rows[0]["question"] == 'a "quoted",\nmultiline question'


def test_guild_channel_choice(store: Store, tmp_path: Path) -> None:
    store.set_channel(1, 100, set_by=7)
    store.set_channel(2, 200, set_by=7)
    store.set_channel(2, None, set_by=7)
    store.close()
    assert Store(tmp_path / "bot.sqlite3").channels() == {1: 100}


def test_csv_export_defuses_spreadsheet_formulas(store: Store) -> None:
    store.add_answer(record(40, question='=HYPERLINK("http://x","click")', answer="-2+3"))
    store.add_answer(record(41, question="@SUM(A1)", answer="plain", tokens=-1))
    rows = list(csv.reader(io.StringIO(store.export_csv())))
    header = rows[0]
    by_id = {row[0]: dict(zip(header, row, strict=True)) for row in rows[1:]}
    assert by_id["40"]["question"] == '\'=HYPERLINK("http://x","click")'
    assert by_id["40"]["answer"] == "'-2+3"
    assert by_id["41"]["question"] == "'@SUM(A1)" and by_id["41"]["answer"] == "plain"
    assert by_id["41"]["tokens"] == "-1"  # a number, not text: left alone
