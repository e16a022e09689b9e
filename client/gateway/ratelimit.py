"""Per-token limits: a token bucket for request rate and a counter for concurrent generations."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """``rate_per_minute`` sustained, up to ``burst`` at once. ``take(key)`` returns 0 when the
    request may go ahead, else the seconds until it could."""

    rate_per_minute: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, key: str) -> float:
        rate = self.rate_per_minute / 60.0
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate


@dataclass
class ConcurrencyLimiter:
    """At most ``limit`` running generations per key; ``acquire`` says whether one may start."""

    limit: int
    _running: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, key: str) -> bool:
        with self._lock:
            if self._running.get(key, 0) >= self.limit:
                return False
            self._running[key] = self._running.get(key, 0) + 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            left = self._running.get(key, 0) - 1
            if left > 0:
                self._running[key] = left
            else:
                self._running.pop(key, None)

    def running(self, key: str) -> int:
        return self._running.get(key, 0)
