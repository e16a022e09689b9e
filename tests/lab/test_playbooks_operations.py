"""Day-2 on the converged swarm: a killed server comes back, a rolling restart keeps every block
served, a bot token Discord refuses fails the play, purge removes a host. Runs after
test_playbooks_converge.py (it changes the swarm); the purge test comes last.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.lab.conftest_playbooks import (
    NUM_BLOCKS,
    REPLICATION,
    SERVER_HOSTS,
    SERVICE_HOST,
    CoverageSampler,
    SwarmLab,
    lab_bot_token,
)
from tests.lab.labhosts import parse_recap

pytestmark = pytest.mark.lab

# Each p2pd on the host with the unit whose cgroup holds it ("-" when outside every unit).
P2PD_OWNERS = (
    'for p in $(pgrep -x p2pd); do printf "%s %s\\n" "$p" '
    '"$(sed -n "s#^0::.*/\\([^/]*\\.service\\)\\$#\\1#p" /proc/$p/cgroup | grep . || echo -)"; done'
)


def p2pd_owners(swarm: SwarmLab, host: str) -> dict[int, str]:
    out = swarm.lab.ssh(host, P2PD_OWNERS, check=True).stdout
    return {int(pid): unit for pid, unit in (line.split() for line in out.splitlines())}


def main_pid(swarm: SwarmLab, host: str) -> str:
    return swarm.unit(host, "petals-server@0.service", "MainPID")["MainPID"]


def test_a_killed_server_is_restarted_without_orphans(swarm_lab: SwarmLab) -> None:
    host, unit = "srv2", "petals-server@0.service"
    before = swarm_lab.unit(host, unit, "MainPID", "NRestarts")
    old_p2pd = [pid for pid, owner in p2pd_owners(swarm_lab, host).items() if owner == unit]
    assert old_p2pd, "the server should run its own p2pd"

    swarm_lab.lab.ssh(host, f"kill -9 {before['MainPID']}", check=True)

    deadline = time.monotonic() + 240
    while True:
        now = swarm_lab.unit(host, unit, "MainPID", "NRestarts", "ActiveState")
        restarted = int(now["NRestarts"]) == int(before["NRestarts"]) + 1
        if (restarted and now["ActiveState"] == "active") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert restarted and now["ActiveState"] == "active", now  # Type=notify: serving again
    assert now["MainPID"] != before["MainPID"]
    owners = p2pd_owners(swarm_lab, host)
    assert not set(old_p2pd) & set(owners), "the killed server's p2pd outlived it"
    assert "-" not in owners.values(), owners
    assert swarm_lab.wait_for_replication(REPLICATION) == [REPLICATION] * NUM_BLOCKS


def test_rolling_restart_never_leaves_a_block_uncovered(swarm_lab: SwarmLab) -> None:
    assert swarm_lab.wait_for_replication(REPLICATION) == [REPLICATION] * NUM_BLOCKS
    pids = {h: main_pid(swarm_lab, h) for h in SERVER_HOSTS}
    sampler = CoverageSampler(swarm_lab)
    try:
        res = swarm_lab.playbook("rolling_restart.yml")
    finally:
        samples = sampler.stop()

    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:] + swarm_lab.diagnose()
    assert sorted(parse_recap(res.stdout)) == sorted(SERVER_HOSTS)
    readings = [s for s in samples if "min" in s]
    assert len(readings) >= 30 and len(readings) >= 0.8 * len(samples), samples[-5:]
    # Sampled once a second: no block ever lost its last server...
    assert min(s["min"] for s in readings) >= 1, [s for s in readings if s["min"] < 1][:5]
    # ...although each server did go away (a dip to one replica) and came back.
    dips = [b for a, b in itertools.pairwise(readings) if a["min"] == 2 and b["min"] == 1]
    assert len(dips) >= 2, readings
    after = {h: main_pid(swarm_lab, h) for h in SERVER_HOSTS}
    assert all(after[h] != pids[h] for h in SERVER_HOSTS), (pids, after)
    assert swarm_lab.wait_for_replication(REPLICATION) == [REPLICATION] * NUM_BLOCKS


def test_upgrade_restarts_a_host_whose_runtime_changed(swarm_lab: SwarmLab) -> None:
    # The wheelhouse is the same, so pip changes nothing; the extra var stands in for a new
    # release (extra vars win over the role's set_fact) to walk the restart-and-wait path.
    host = "srv2"
    before = {h: main_pid(swarm_lab, h) for h in SERVER_HOSTS}
    res = swarm_lab.playbook(
        "upgrade.yml", "--limit", host, "-e", "petals_runtime_changed=true", timeout=900
    )
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:] + swarm_lab.diagnose()
    after = {h: main_pid(swarm_lab, h) for h in SERVER_HOSTS}
    assert [h for h in SERVER_HOSTS if after[h] != before[h]] == [host]
    assert swarm_lab.replication() == [REPLICATION] * NUM_BLOCKS


def test_a_refused_bot_token_fails_the_play_with_the_bots_journal(swarm_lab: SwarmLab) -> None:
    """The play waits until the bot is logged in: with a token Discord refuses (the fake answers
    401, as Discord does) it fails and says why from the bot's journal, instead of reporting
    success over a restart loop; the token appears nowhere in its output. A refused token is not
    retried: the unit stays failed (no new login every 10 s) and the wait ends without its
    timeout, which is left at the role's default here."""
    wrong = lab_bot_token()
    try:
        res = swarm_lab.playbook(
            "site.yml", "--tags", "petals_bot", "-e",
            json.dumps({"petals_bot_discord_token": wrong}), timeout=600,
        )  # fmt: skip
        assert res.returncode != 0, res.stdout[-4000:]
        assert "was not logged in to Discord" in res.stdout, res.stdout[-4000:]
        assert "an error a restart cannot fix" in res.stdout, res.stdout[-4000:]
        assert "Discord refused the bot token" in res.stdout, res.stdout[-4000:]
        assert wrong not in res.stdout + res.stderr
        unit = swarm_lab.unit(SERVICE_HOST, "petals-bot.service", "ActiveState", "NRestarts")
        assert unit == {"ActiveState": "failed", "NRestarts": "0"}, unit
    finally:  # no bot with the wrong token under the tests that follow
        swarm_lab.lab.ssh(SERVICE_HOST, "systemctl stop petals-bot.service")


def test_purge_needs_confirmation_then_leaves_nothing(swarm_lab: SwarmLab) -> None:
    host = "srv3"
    refused = swarm_lab.playbook("purge.yml", "--limit", host)
    assert refused.returncode != 0 and "petals_purge_confirm=true" in refused.stdout
    assert swarm_lab.unit(host, "petals-server@0.service", "ActiveState")["ActiveState"] == "active"

    res = swarm_lab.playbook("purge.yml", "--limit", host, "-e", "petals_purge_confirm=true")

    assert res.returncode == 0, res.stdout[-6000:]
    leftovers = swarm_lab.lab.ssh(
        host,
        "ls -d /etc/petals /var/lib/petals* /var/cache/petals* /opt/petals "
        "/etc/systemd/system/petals-* /etc/systemd/system/*/petals-* 2>/dev/null; "
        "systemctl list-units --all --plain --no-legend 'petals-*'; "
        "getent passwd petals petals-public; pgrep -a -f '[s]warm.runner|[p]etalctl|[p]2pd'; "
        "nft list table inet petals 2>/dev/null",
    ).stdout
    assert leftovers.strip() == ""
    # The other three servers still hold every block.
    assert min(swarm_lab.wait_for_replication(1, timeout=30)) >= 1
