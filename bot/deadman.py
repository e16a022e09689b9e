"""The dead-man's switch on the alerting path: Alertmanager sends an always-firing alert named
"Watchdog" every few minutes (its repeat_interval); when none has arrived for ``timeout_s``,
Prometheus, Alertmanager or the webhook between them is down, and no other alert could reach
Discord either. ``DeadMansSwitch`` is the pure state; the bot checks it periodically and posts
once when the path goes quiet and once when it comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from bot.alerttext import AlertmanagerPayload

WATCHDOG = "Watchdog"
Change = Literal["down", "up"] | None


def is_watchdog(labels: dict[str, str]) -> bool:
    return labels.get("alertname") == WATCHDOG


def without_watchdog(payload: AlertmanagerPayload) -> AlertmanagerPayload:
    """The payload minus the Watchdog alert (it is a heartbeat, not news for the channel)."""
    alerts = [a for a in payload.alerts if not is_watchdog(a.labels)]
    return payload.model_copy(update={"alerts": alerts})


class DeadMansSwitch:
    """Counts silence from the last Watchdog (or from start, when none came yet)."""

    def __init__(self, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self.last_seen = clock()
        self.down = False

    def heartbeat(self) -> Change:
        """A Watchdog arrived; "up" when the path had been reported down."""
        self.last_seen = self._clock()
        if self.down:
            self.down = False
            return "up"
        return None

    def check(self) -> Change:
        """ "down" the first time the silence exceeds the timeout."""
        if not self.down and self._clock() - self.last_seen > self.timeout_s:
            self.down = True
            return "down"
        return None

    def silent_for(self) -> float:
        return self._clock() - self.last_seen


def down_text(silent_s: float) -> str:
    minutes = max(1, round(silent_s / 60))
    return (
        f"🚨 **The alerting path is down**: no Watchdog heartbeat from Alertmanager for "
        f"{minutes} min. Alerts cannot reach this channel until it is back; check Prometheus, "
        f"Alertmanager and the bot's webhook."
    )


def up_text(silent_s: float) -> str:
    minutes = max(1, round(silent_s / 60))
    return (
        f"✅ **The alerting path is back**: Watchdog heartbeats arrive again (quiet {minutes} min)."
    )
