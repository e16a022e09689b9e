"""Run a child that should finish; if it hangs, show where every one of its threads is.

``subprocess.run(..., timeout=...)`` on a hung Python child only says that it timed out. Here
the child runs with ``PYTHONFAULTHANDLER=1`` and gets SIGABRT on timeout, so the
``TimeoutExpired`` a test reports carries each thread's stack (how the exit hang of
swarm/compat_exit.py was found).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any


class ChildHung(subprocess.TimeoutExpired):
    """A ``TimeoutExpired`` whose message ends with the child's last output (where it was, e.g.
    the task an ansible-playbook waited on) and last stderr (its threads' stacks)."""

    def __str__(self) -> str:
        out = _text(self.output)[-4000:]
        err = _text(self.stderr)[-6000:]
        return (
            f"{super().__str__()}; its stdout ends with:\n{out}\n"
            f"-- and its stderr ends with:\n{err}"
        )


def run_showing_stacks(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Like ``subprocess.run(argv, capture_output=True, text=True, timeout=timeout)``."""
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONFAULTHANDLER"] = "1"
    with subprocess.Popen(
        list(argv),
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen_kwargs,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired as late:  # a grandchild holds the pipes open
                proc.kill()
                proc.wait()
                out, err = _text(late.output), _text(late.stderr)
            raise ChildHung(proc.args, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""
