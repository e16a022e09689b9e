"""Finding every process a test started, however deep: a marker in the environment.

Children inherit the environment, so a marker set on the top process is visible in every
descendant (Petals servers, hivemind workers, p2pd), even after they are re-parented to init.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

MARKER = "PETALS_KIT_TEST_MARKER"


def new_marker_env(**extra: str) -> tuple[str, dict[str, str]]:
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETALS_")}
    env.update(extra)
    env[MARKER] = marker
    return marker, env


def processes_with_marker(marker: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose environment carries ``marker``: (pid, command line)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state != "Z":
            found.append((int(entry.name), cmdline[:160]))
    return found


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


class LineReader:
    """Collect a process stream's lines in a thread, so tests can wait for one without blocking."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "stream closed" if self._closed else f"timed out after {timeout:.0f}s"
                    tail = "\n".join(self.lines[-20:])
                    raise AssertionError(f"{why} before a line with {needle!r}:\n{tail}")
                self._changed.wait(left)
