"""Alertmanager payloads to Discord text (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bot.alerttext import AlertmanagerPayload, alert_messages
from tests.bot.helpers import alert

pytestmark = pytest.mark.unit


def payload(*alerts: dict[str, Any], truncated: int = 0) -> AlertmanagerPayload:
    return AlertmanagerPayload.model_validate(
        {
            "version": "4",
            "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
            "receiver": "petals-discord",
            "groupKey": "{}:{alertname=...}",
            "alerts": list(alerts),
            "truncatedAlerts": truncated,
            "externalURL": "http://alertmanager:9093",
        }
    )


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        (
            [alert("firing", "PetalsBlockUncovered")],
            "🔥 **FIRING** · **PetalsBlockUncovered** · critical · model=tiny job=petals\n"
            "> PetalsBlockUncovered summary\nline one line two\n-# since 2024-04-10 10:00 UTC",
        ),
        (
            [alert("resolved", "PetalsProbeFailing")],
            "✅ **RESOLVED** · **PetalsProbeFailing** · critical · model=tiny job=petals\n"
            "> PetalsProbeFailing summary\nline one line two\n-# resolved after 7 min",
        ),
    ],
)
def test_one_alert(alerts: list[dict[str, Any]], expected: str) -> None:
    assert alert_messages(payload(*alerts)) == [expected]


def test_firing_alerts_come_before_resolved_ones() -> None:
    text = "\n".join(
        alert_messages(payload(alert("resolved", "A"), alert("firing", "Z"), alert("firing", "B")))
    )
    assert text.index("**B**") < text.index("**Z**") < text.index("**A**")


def test_many_alerts_are_capped_and_split_under_the_limit() -> None:
    alerts = [alert("firing", f"Alert{i}", labels={"block": str(i)}) for i in range(30)]
    messages = alert_messages(payload(*alerts, truncated=5), limit=500)
    assert all(len(m) <= 500 for m in messages)
    joined = "\n".join(messages)
    assert joined.count("🔥") == 20
    assert "and 15 more alert(s)" in joined


def test_long_descriptions_are_trimmed() -> None:
    long = alert("firing", "Long")
    long["annotations"]["description"] = "word " * 200
    text = alert_messages(payload(long))[0]
    assert "…" in text and len(text) < 600


@pytest.mark.parametrize(
    "body",
    [
        {"version": "3", "status": "firing", "alerts": []},
        {"version": "4", "status": "burning", "alerts": []},
        {"version": "4", "status": "firing"},
        {"version": "4", "status": "firing", "alerts": [{"status": "maybe"}]},
    ],
)
def test_bad_payloads_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AlertmanagerPayload.model_validate(body)
