"""ManagedProcess stops a whole process tree, including children that ignore signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from swarm.process import ManagedProcess, group_members
from tests.swarm.procs import LineReader, new_marker_env, processes_with_marker, wait_for

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
    os.kill(process.pid, signal.SIGKILL)  # the leader dies alone; the grandchild lives on
    wait_for(lambda: process.poll() is not None, 10, "the leader to die")
    assert len(processes_with_marker(marker)) == 1
    process.stop(grace_s=1, term_s=1)
    assert processes_with_marker(marker) == []


def test_without_a_log_file_the_tree_writes_to_our_stderr(tmp_path):
    """Under systemd our stderr is the journal: a child's output must reach it, not /dev/null."""
    supervisor = textwrap.dedent(
        """
        import sys, time
        from swarm.process import ManagedProcess
        child = ManagedProcess("child", [sys.executable, "-c",
            "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr)"])
        child.start()
        while child.is_running():
            time.sleep(0.05)
        sys.exit(child.stop())
        """
    )
    marker, env = new_marker_env()
    done = subprocess.run(
        [sys.executable, "-c", supervisor], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["to stdout", "to stderr"]
    assert done.stdout == ""  # stdout stays ours (the bootstrap prints its multiaddr there)
    assert processes_with_marker(marker) == []


# A child that leads its own group (as ManagedProcess starts it) and watches its parent, with a
# grandchild in that group that ignores SIGTERM (a wedged p2pd). The parent sleeps until killed.
ORPHANED = textwrap.dedent(
    """
    import subprocess, sys, time
    CHILD = '''
    import subprocess, sys, time
    from swarm.process import end_group_when_orphaned
    end_group_when_orphaned(poll_s=0.1, term_s=1.0)
    subprocess.Popen([sys.executable, "-c",
        "import signal, time\\\\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\\\n"
        "print('grandchild up', flush=True)\\\\n"
        "time.sleep(600)"])
    time.sleep(600)
    '''
    subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
    time.sleep(600)
    """
)


def test_an_orphaned_tree_ends_itself_even_if_a_member_ignores_sigterm():
    marker, env = new_marker_env()
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHANED], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        LineReader(parent.stdout).wait_for("grandchild up", timeout=30)
        assert len(processes_with_marker(marker)) == 3
        os.kill(parent.pid, signal.SIGKILL)  # the supervisor dies without stopping its child
        parent.wait(timeout=10)
        # The watcher polls every 0.1 s, SIGTERMs, waits 1 s, then SIGKILLs its group.
        wait_for(lambda: processes_with_marker(marker) == [], 20, "the orphaned tree to end")
    finally:
        for pid, _ in processes_with_marker(marker):
            os.kill(pid, signal.SIGKILL)


def test_the_watcher_stays_off_in_a_group_it_does_not_lead():
    """A runner started inside someone else's process group (a shell script's) must never
    kill that group when its parent exits."""
    code = (
        "from swarm.process import end_group_when_orphaned\n"
        "watcher = end_group_when_orphaned(poll_s=0.1)\n"
        "watcher.join(timeout=30)\n"
        "print('watching' if watcher.is_alive() else 'off', flush=True)\n"
    )
    _, env = new_marker_env()
    # Not start_new_session: the child joins the test's own group, which it does not lead.
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "off\n", done.stderr
