"""ManagedProcess stops a whole process tree, including children that ignore signals."""

from __future__ import annotations

import sys
import textwrap

import pytest

from swarm.process import ManagedProcess, group_members
from tests.swarm.procs import new_marker_env, processes_with_marker, wait_for

pytestmark = pytest.mark.swarm

# A leader that exits on SIGINT, with a grandchild that ignores SIGINT and SIGTERM (like a
# p2pd whose parent died): only a signal to the whole group can end it.
LEADER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time\\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "print('child up', flush=True)\\n"
        "time.sleep(600)"])
    try:
        time.sleep(600)
    except KeyboardInterrupt:
        sys.exit(0)
    """
)


def test_stop_reaps_stubborn_grandchildren(tmp_path):
    marker, env = new_marker_env()
    log = tmp_path / "leader.log"
    process = ManagedProcess("leader", [sys.executable, "-c", LEADER], env=env, log_path=log)
    process.start()
    wait_for(lambda: "child up" in log.read_text(), 20, "the grandchild to start")
    assert len(processes_with_marker(marker)) == 2
    process.stop(grace_s=5, term_s=1)
    assert processes_with_marker(marker) == []
    assert group_members(process.pid) == []


def test_kill_after_leader_already_died(tmp_path):
    marker, env = new_marker_env()
    log = tmp_path / "leader.log"
    process = ManagedProcess("leader", [sys.executable, "-c", LEADER], env=env, log_path=log)
    process.start()
    wait_for(lambda: "child up" in log.read_text(), 20, "the grandchild to start")
    import os
    import signal

    os.kill(process.pid, signal.SIGKILL)  # the leader dies alone; the grandchild lives on
    wait_for(lambda: process.poll() is not None, 10, "the leader to die")
    assert len(processes_with_marker(marker)) == 1
    process.stop(grace_s=1, term_s=1)
    assert processes_with_marker(marker) == []
