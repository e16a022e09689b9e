"""Start a process tree in its own process group and stop the whole tree, leaving no orphans.

A Petals server is a tree (server, module container, runtime, connection handlers, p2pd). Killing
only the top process leaves p2pd and friends holding ports. Each child we start leads a new
session/process group; stopping asks the leader to shut down gracefully (SIGINT: petals then
announces its blocks OFFLINE), then SIGTERM and finally SIGKILL go to the whole group, and we
wait until no process of the group is left. Under systemd, KillMode=control-group does the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from swarm.errors import ProcessError


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class ManagedProcess:
    """One child process tree; ``stop()`` reaps all of it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ProcessError(f"{self.name} was not started")
        return self._proc.pid

    def start(self) -> ManagedProcess:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log if self._log else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own session and process group: we can signal the tree
            )
        except OSError as exc:
            self._close_log()
            raise ProcessError(f"cannot start {self.name}: {exc}") from None
        return self

    def poll(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _wait_group_empty(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._proc is not None:
                self._proc.poll()  # reap the leader so it does not linger as a zombie
            if not group_members(self.pid):
                return True
            time.sleep(0.05)
        return not group_members(self.pid)

    def request_stop(self) -> None:
        """Ask the leader to shut down gracefully (SIGINT) without waiting; ``stop()`` finishes."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGINT)

    def stop(self, grace_s: float = 15.0, term_s: float = 5.0) -> int | None:
        """Graceful SIGINT to the leader, then SIGTERM and SIGKILL to the group. Idempotent."""
        if self._proc is None:
            return None
        try:
            if self._proc.poll() is None:
                self.request_stop()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=grace_s)
            # The leader may be gone while its children (p2pd, runtime) live on: always sweep.
            if group_members(self.pid):
                self._signal_group(signal.SIGTERM)
                if not self._wait_group_empty(time.monotonic() + term_s):
                    self._signal_group(signal.SIGKILL)
                    self._wait_group_empty(time.monotonic() + 10)
            return self._proc.wait(timeout=10)
        finally:
            self._close_log()

    def kill(self) -> None:
        """Immediate SIGKILL of the whole group (tests, or a second Ctrl-C)."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._wait_group_empty(time.monotonic() + 10)
        self._proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
