"""Alertmanager's webhook payload (version 4) as a typed model, and the Discord text for it.

Pure: payload in, message contents out. One line block per alert, firing ones first, each with
its name, severity, the labels that say where (model, block, instance), the summary and a
trimmed description; split to Discord's 2,000 characters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bot.formatting import DISCORD_LIMIT, split_message

# Labels worth showing besides alertname/severity, in this order; others are left out so a
# message stays short (Alertmanager's own URL has the full set).
WHERE_LABELS = ("model", "block", "peer", "server", "instance", "job")
MAX_DESCRIPTION = 300
MAX_ALERTS_SHOWN = 20


class Alert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class AlertmanagerPayload(BaseModel):
    """POST body of an Alertmanager webhook receiver (version "4")."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    alerts: list[Alert] = Field(max_length=1000)
    externalURL: str = ""
    truncatedAlerts: int = 0


def _when(moment: datetime | None) -> str:
    if moment is None or moment.year < 2000:  # Alertmanager sends 0001-01-01 for "unset"
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None or start.year < 2000 or end.year < 2000:
        return ""
    seconds = max(0, int((end - start).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def _one(alert: Alert) -> str:
    labels = alert.labels
    name = labels.get("alertname", "unnamed alert")
    severity = labels.get("severity", "")
    icon = "🔥" if alert.status == "firing" else "✅"
    head = [f"{icon} **{alert.status.upper()}**", f"**{name}**"]
    if severity:
        head.append(severity)
    where = [f"{key}={labels[key]}" for key in WHERE_LABELS if labels.get(key)]
    if where:
        head.append(" ".join(where))
    lines = [" · ".join(head)]
    summary = alert.annotations.get("summary", "").strip()
    if summary:
        lines.append(f"> {summary}")
    description = " ".join(alert.annotations.get("description", "").split())
    if description:
        if len(description) > MAX_DESCRIPTION:
            description = description[: MAX_DESCRIPTION - 1].rstrip() + "…"
        lines.append(description)
    if alert.status == "firing":
        since = _when(alert.startsAt)
        if since:
            lines.append(f"-# since {since}")
    else:
        lasted = _duration(alert.startsAt, alert.endsAt)
        if lasted:
            lines.append(f"-# resolved after {lasted}")
    return "\n".join(lines)


def alert_messages(payload: AlertmanagerPayload, limit: int = DISCORD_LIMIT) -> list[str]:
    """Discord messages for one notification: firing alerts first, then resolved ones."""
    ordered = sorted(
        payload.alerts, key=lambda a: (a.status != "firing", a.labels.get("alertname", ""))
    )
    shown = ordered[:MAX_ALERTS_SHOWN]
    blocks = [_one(alert) for alert in shown]
    hidden = len(ordered) - len(shown) + payload.truncatedAlerts
    if hidden > 0:
        blocks.append(f"-# … and {hidden} more alert(s) in Alertmanager")
    if not blocks:
        return []
    return split_message("\n\n".join(blocks), limit)
