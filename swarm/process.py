"""Start a process tree in its own process group and stop the whole tree, leaving no orphans.

A Petals server is a tree (server, module container, runtime, connection handlers, p2pd). Killing
only the top process leaves p2pd and friends holding ports. Each child we start leads a new
session/process group; stopping asks the leader to shut down gracefully (SIGINT: petals then
announces its blocks OFFLINE), then SIGTERM and finally SIGKILL go to the whole group, and we
wait until no process of the group is left. Under systemd, KillMode=control-group does the same.

Without a log file a child writes to our stderr (fd 2): under systemd that is the journal, so a
server's log lines and tracebacks are kept. ``end_group_when_orphaned`` is the child-side half:
it ends the child's own group when its supervisor dies without stopping it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from swarm.errors import ProcessError

_STDERR_FD = 2


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ... starttime=[19]


def descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid`` (any session), mapped to their start time (to spot pid reuse).

    Some children leave the process group: torch's ``torch_shm_manager`` starts its own session.
    """
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields is None or fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        starts[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        if child not in found:
            found[child] = starts[child]
            stack.extend(children.get(child, []))
    return found


def _alive_as_before(pid: int, start: str) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start


def tree_of(pid: int) -> dict[int, str]:
    """``pid`` and its live descendants, mapped to their start times (for ``kill_leftovers``)."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] == "Z":
        return {}
    return {pid: fields[19], **descendants(pid)}


def kill_leftovers(tree: dict[int, str]) -> list[int]:
    """SIGKILL the processes of ``tree`` (from ``tree_of``) that still run; the PIDs killed.

    For a tree whose polite shutdown is over: a stopped (SIGSTOP) or wedged process ignores
    SIGTERM, and a child re-parented away from its dead leader is no one's to reap."""
    killed = []
    for pid, start in tree.items():
        if _alive_as_before(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


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
        """Start the tree; its stdout and stderr go to ``log_path`` if given, else to our stderr."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                # fd 2, not sys.stderr: that object may be replaced (pytest) and have no fd.
                stdout=self._log if self._log else _STDERR_FD,
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
        # Remember the whole tree now: once the leader is gone, its children are re-parented.
        tree = descendants(self.pid) if self._proc.poll() is None else {}
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
            self._sweep(tree)
            return self._proc.wait(timeout=10)
        finally:
            self._close_log()

    @staticmethod
    def _sweep(tree: dict[int, str]) -> None:
        """End descendants that left our process group. They exit on their own once their
        clients are gone (torch_shm_manager does): give them a moment, then SIGKILL."""

        def alive() -> list[int]:
            return [pid for pid, start in tree.items() if _alive_as_before(pid, start)]

        for last_resort in (False, True):
            deadline = time.monotonic() + (5.0 if last_resort else 3.0)
            while alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not alive() or last_resort:
                return
            kill_leftovers(tree)

    def kill(self) -> None:
        """Immediate SIGKILL of the whole group (tests, or a second Ctrl-C)."""
        if self._proc is None:
            return
        tree = descendants(self.pid)
        self._signal_group(signal.SIGKILL)
        kill_leftovers(tree)
        self._wait_group_empty(time.monotonic() + 10)
        self._proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def end_group_when_orphaned(poll_s: float = 1.0, term_s: float = 5.0) -> threading.Thread:
    """Watch (in a daemon thread) for our parent to die; then end our whole process group.

    For a child started by ``ManagedProcess`` (it leads its own group): if the supervisor is
    SIGKILLed or crashes, nothing stops the tree, and p2pd and friends would live on holding
    ports. The other members get SIGTERM first and SIGKILL after ``term_s``; the SIGKILL goes to
    the group, ending this process last. A SIGTERM to the whole group would end this process
    first (no Python handler is installed for it), so its SIGKILL escalation would never run.
    Does nothing unless we lead our group: a group we merely joined (a shell script's) is not
    ours to kill.
    """
    parent = os.getppid()
    me = os.getpid()
    group = os.getpgrp()

    def others() -> list[int]:
        return [pid for pid in group_members(group) if pid != me]

    def watch() -> None:
        if group != me:
            return
        while os.getppid() == parent:
            time.sleep(poll_s)
        for pid in others():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + term_s
        while others() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(group, signal.SIGKILL)

    thread = threading.Thread(target=watch, name="die-with-parent", daemon=True)
    thread.start()
    return thread
