"""Keep the latest swarm snapshot fresh: a background thread reads the DHT every interval.

Reading the DHT is slow and may fail; metrics requests and the status page only format the last good
snapshot, so a scrape never waits for the swarm. A failed read keeps the previous snapshot and is
counted; its age tells readers how stale the picture is. Every read, good or failed, also moves the
per-server and per-bootstrap ``History`` (monitoring/history.py) on by one mark.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

from monitoring.history import DEFAULT_POINTS, History
from monitoring.snapshot import BootstrapRecord, SwarmSnapshot
from swarm.errors import SwarmUnavailable

log = logging.getLogger(__name__)

Fetch = Callable[[], SwarmSnapshot]


class SwarmNotSeen(SwarmUnavailable):
    """A read that saw no bootstrap peer and no online server: it fails, yet what it learnt of
    the bootstrap peers (none answered) belongs in their history."""

    def __init__(self, message: str, bootstraps: Sequence[BootstrapRecord]) -> None:
        super().__init__(message)
        self.bootstraps = tuple(bootstraps)


@dataclasses.dataclass(frozen=True)
class RefreshStatus:
    """What the refresher knows, as one consistent copy (times are unix seconds)."""

    interval_s: float
    snapshot: SwarmSnapshot | None = None
    last_success_at: float | None = None  # when the last good snapshot arrived
    last_attempt_at: float | None = None  # when the last read finished, good or not
    last_duration_s: float | None = None  # how long the last read took, good or not
    last_ok: bool = False
    errors_total: int = 0
    last_error: str | None = None
    history: History = dataclasses.field(default_factory=History)  # the last reads' marks

    def age_s(self, now: float | None = None) -> float | None:
        """Seconds since the last good snapshot, None before the first one."""
        if self.last_success_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_success_at)

    def is_fresh(self, stale_after_intervals: float, now: float | None = None) -> bool:
        age = self.age_s(now)
        return age is not None and age < stale_after_intervals * self.interval_s


class Refresher:
    """Calls ``fetch`` every ``interval_s`` seconds on a daemon thread; ``status()`` reads results.

    ``stop()`` wakes the thread at once; a read in progress cannot be interrupted (petals' DHT calls
    are blocking), so ``stop`` waits for it at most ``join_timeout_s``.
    """

    def __init__(
        self,
        fetch: Fetch,
        interval_s: float,
        *,
        join_timeout_s: float = 10.0,
        history_points: int = DEFAULT_POINTS,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s!r}: must be a positive number of seconds")
        self._fetch = fetch
        self._join_timeout_s = join_timeout_s
        self._lock = threading.Lock()
        self._status = RefreshStatus(interval_s=interval_s, history=History(history_points))
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        return self._status.interval_s

    def status(self) -> RefreshStatus:
        with self._lock:
            return self._status

    def refresh_once(self) -> bool:
        """Read the DHT now, on the calling thread; True when a new snapshot was kept."""
        started = time.monotonic()
        try:
            snapshot = self._fetch()
            if not isinstance(snapshot, SwarmSnapshot):
                raise TypeError(f"fetch returned {type(snapshot).__name__}, not a SwarmSnapshot")
        except Exception as exc:
            # Any failure of a read (DHT timeout, bad record, bug in fetch) must not kill the loop:
            # it is counted and shown, and the previous snapshot stays.
            duration = time.monotonic() - started
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("swarm refresh failed after %.2f s: %s", duration, message)
            now = time.time()
            bootstraps = exc.bootstraps if isinstance(exc, SwarmNotSeen) else None
            with self._lock:
                self._status = dataclasses.replace(
                    self._status,
                    history=self._status.history.after_failed_read(now, bootstraps),
                    last_attempt_at=now,
                    last_duration_s=duration,
                    last_ok=False,
                    errors_total=self._status.errors_total + 1,
                    last_error=message,
                )
            return False
        duration = time.monotonic() - started
        now = time.time()
        with self._lock:
            self._status = dataclasses.replace(
                self._status,
                snapshot=snapshot,
                history=self._status.history.after_read(snapshot),
                last_success_at=now,
                last_attempt_at=now,
                last_duration_s=duration,
                last_ok=True,
            )
        return True

    def start(self) -> None:
        """Start refreshing in the background; the first read begins at once."""
        if self._thread is not None:
            raise RuntimeError("Refresher already started")
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="petals-health-refresher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (a read in progress finishes first)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join(self._join_timeout_s)
        if thread.is_alive():
            log.warning(
                "refresher thread still busy after %.1f s; leaving it", self._join_timeout_s
            )

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            self.refresh_once()
            # Interval measured from the start of a read, so slow reads don't stretch the period.
            remaining = self.interval_s - (time.monotonic() - started)
            if self._stopping.wait(max(0.0, remaining)):
                break
