"""Web chat sign-ins: random session ids (the cookie's value) mapped to a token's name."""

from __future__ import annotations

import secrets
import threading
import time


class WebSessions:
    """session id -> (token name, expiry)."""

    def __init__(self, hours: float) -> None:
        self.ttl = hours * 3600
        self._sessions: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def create(self, name: str) -> str:
        ident = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            self._sessions[ident] = (name, now + self.ttl)
        return ident

    def lookup(self, ident: str) -> str | None:
        with self._lock:
            entry = self._sessions.get(ident)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def end(self, ident: str) -> None:
        with self._lock:
            self._sessions.pop(ident, None)
