"""/status and /stats text (pure)."""

from __future__ import annotations

import pytest

from bot.reports import stats_text, status_text
from bot.store import ModelStats, Stats
from tests.bot.helpers import health_state

pytestmark = pytest.mark.unit


def test_status_of_a_healthy_swarm() -> None:
    assert status_text(health_state()) == (
        "🟢 **tiny-llama**: healthy — 8/8 blocks served by 2 trusted server(s) online\n"
        "• last probe: 0.31 s to first token, 42.5 tokens/s"
    )


def test_status_names_uncovered_blocks() -> None:
    text = status_text(health_state(uncovered=[5]))
    assert text.startswith("🔴 **tiny-llama**: broken — 4/8 blocks served by 1 trusted server")
    assert "no server for block(s) 4-7: answers will fail" in text


def test_status_before_the_first_reading() -> None:
    text = status_text({"detail": "no successful read of the swarm's DHT yet", "refresh": {}})
    assert text.startswith("⚪") and "no successful read" in text


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        (Stats(0, 0, 0, 0, [], {}), "No answers yet."),
        (
            Stats(
                5,
                3,
                4,
                1,
                [
                    ModelStats("big-70b", 3, 3, 0, 2.0, 5.5),
                    ModelStats("small-7b", 2, 1, 1, None, None),
                ],
                {"big-70b": 6, "small-7b": 1, "equal": 4},
            ),
            "**5 answer(s)**, 3 rated: 👍 4 · 👎 1\n"
            "• big-70b: 3 answer(s), 👍 3 · 👎 0 · avg 2.00 s to first token, 5.5 tokens/s\n"
            "• small-7b: 2 answer(s), 👍 1 · 👎 1\n"
            "A/B (one vote per student and pair: the answer rated higher wins, a lone 👍 "
            "prefers its answer, a lone 👎 the other): big-70b preferred 6, small-7b preferred 1, "
            "4 equal",
        ),
    ],
)
def test_stats_text(stats: Stats, expected: str) -> None:
    assert stats_text(stats) == expected
