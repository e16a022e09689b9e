"""Discord's per-route rate limits as the fake enforces them: buckets keyed by a bucket name
and the route's major parameter (channel, guild or webhook), a sliding window of ``limit``
requests per ``per_s`` seconds, and the headers Discord documents
(https://discord.com/developers/docs/topics/rate-limits): X-RateLimit-Limit, -Remaining,
-Reset, -Reset-After, -Bucket on every answer of a limited route, and on a 429 also
X-RateLimit-Scope, Retry-After and a JSON body with ``retry_after`` and ``global``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field

MAJOR_PARAMETERS = ("channel_id", "guild_id", "webhook_id")


@dataclass
class BucketRule:
    name: str
    limit: int
    per_s: float
    announce: bool = True  # send X-RateLimit-* on successful answers (Discord does)

    @property
    def hash(self) -> str:
        return hashlib.sha1(self.name.encode()).hexdigest()[:16]


@dataclass
class _Window:
    hits: deque[float] = field(default_factory=deque)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    headers: dict[str, str]
    retry_after: float = 0.0


class RateLimits:
    """Route key -> bucket rule; ``check`` counts a request and says whether it may pass."""

    def __init__(self) -> None:
        self.rules: dict[str, BucketRule] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self.limited = 0  # 429s answered

    def add(self, routes: list[str], rule: BucketRule) -> None:
        for route in routes:
            self.rules[route] = rule

    def check(self, route: str, match_info: dict[str, str]) -> Verdict | None:
        rule = self.rules.get(route)
        if rule is None:
            return None
        major = next((match_info[k] for k in MAJOR_PARAMETERS if k in match_info), "")
        window = self._windows.setdefault((rule.name, major), _Window())
        now = time.monotonic()
        while window.hits and window.hits[0] <= now - rule.per_s:
            window.hits.popleft()
        if len(window.hits) >= rule.limit:
            reset_after = window.hits[0] + rule.per_s - now
            self.limited += 1
            headers = self._headers(rule, 0, reset_after)
            retry = f"{reset_after:.3f}"
            headers |= {"X-RateLimit-Scope": "user", "Retry-After": retry, "Via": "1.1 google"}
            return Verdict(False, headers, reset_after)
        window.hits.append(now)
        remaining = rule.limit - len(window.hits)
        reset_after = window.hits[0] + rule.per_s - now
        headers = self._headers(rule, remaining, reset_after) if rule.announce else {}
        return Verdict(True, headers)

    @staticmethod
    def _headers(rule: BucketRule, remaining: int, reset_after: float) -> dict[str, str]:
        reset_after = max(reset_after, 0.0)
        return {
            "X-RateLimit-Limit": str(rule.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{math.ceil(reset_after * 1000) / 1000:.3f}",
            "X-RateLimit-Bucket": rule.hash,
        }
