"""The lab harness itself: hosts boot, talk only to each other, converge a role, leave nothing."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.labhosts import REPO_ROOT, BootError, Lab, LabFactory, parse_recap, pick_subnet
from tests.lab.reaper import cleanup_stale, nspawn_pids, traces
from tests.lab.rootfs import apt_mirror

pytestmark = pytest.mark.lab

HOSTS = ["boot1", "srv1", "srv2"]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = "/opt/lab/wheelhouse"
# Reads the SSH banner of host:22 from inside a lab host, by name (so /etc/hosts is used too).
BANNER = "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/22 && head -c 7 <&3'"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    shared = tmp_path_factory.mktemp("wheelhouse")
    (shared / "marker.txt").write_text("from the machine\n")
    return lab_factory(HOSTS, outsiders=["outsider"], bind_ro={shared: SHARED})


def test_every_host_runs_systemd(lab: Lab) -> None:
    for host in [*HOSTS, "outsider"]:
        res = lab.ssh(host, "hostname; systemctl is-system-running")
        assert res.stdout.split() == [host, "running"], res.stderr


def test_hosts_reach_each_other_over_the_bridge(lab: Lab) -> None:
    assert lab.ssh("srv1", BANNER.format("srv2")).stdout == "SSH-2.0"
    assert lab.ssh("boot1", BANNER.format(lab.ip("srv1"))).stdout == "SSH-2.0"


def test_nothing_routes_outside_the_lab(lab: Lab) -> None:
    # `ip route get` asks the routing table only: no packet is sent anywhere.
    for host in HOSTS:
        res = lab.ssh(host, "ip route get 1.1.1.1")
        assert res.returncode != 0 and "unreachable" in res.stderr, (host, res)
    res = lab.run_controller(["ip", "route", "get", "1.1.1.1"])
    assert res.returncode != 0 and "unreachable" in res.stderr
    machine = subprocess.run(["ip", "-4", "-br", "addr"], capture_output=True, text=True).stdout
    assert str(lab.subnet.network_address) not in machine


def test_outsider_is_on_the_bridge_but_outside_the_trusted_cidr(lab: Lab) -> None:
    assert all(ipaddress.ip_address(lab.ip(h)) in lab.trusted_cidr for h in HOSTS)
    assert ipaddress.ip_address(lab.controller_ip) in lab.trusted_cidr
    assert ipaddress.ip_address(lab.ip("outsider")) not in lab.trusted_cidr
    assert lab.ssh("outsider", BANNER.format("srv1")).stdout == "SSH-2.0"


def test_bind_ro_shares_a_folder_read_only(lab: Lab) -> None:
    assert lab.ssh("srv2", f"cat {SHARED}/marker.txt").stdout == "from the machine\n"
    res = lab.ssh("srv2", f"touch {SHARED}/new")
    assert res.returncode != 0 and "Read-only file system" in res.stderr


def test_fixture_role_converges_then_is_idempotent(lab: Lab, tmp_path: Path) -> None:
    inventory = lab.write_inventory(
        tmp_path / "inventory.ini",
        groups={"lab": HOSTS},
        hostvars={"srv2": {"labprobe_description": "probe on srv2"}},
    )
    first = lab.ansible_playbook(FIXTURES / "converge.yml", inventory)
    assert first.returncode == 0, first.stdout + first.stderr
    recap = parse_recap(first.stdout)
    assert sorted(recap) == sorted(HOSTS)
    for host, counts in recap.items():
        assert counts["changed"] > 0 and counts["failed"] == counts["unreachable"] == 0, host

    for host in HOSTS:
        pid = "$(systemctl show -P MainPID labprobe)"
        res = lab.ssh(
            host, f"systemctl is-active labprobe; systemctl is-enabled labprobe; ps -o user= {pid}"
        )
        assert res.stdout.split() == ["active", "enabled", "labprobe"], (host, res.stderr)
    description = lab.ssh("srv2", "systemctl show -P Description labprobe").stdout.strip()
    assert description == "probe on srv2"

    second = lab.ansible_playbook(FIXTURES / "converge.yml", inventory)
    assert second.returncode == 0, second.stdout + second.stderr
    recap = parse_recap(second.stdout)
    assert {host: counts["changed"] for host, counts in recap.items()} == dict.fromkeys(HOSTS, 0)


def test_hosts_do_not_share_units(lab: Lab) -> None:
    # Same unit name on every host: stopping it on one must leave the others running (each nspawn
    # gets its own cgroup; a shared one lets systemd on srv1 kill srv2's service).
    for host in HOSTS:
        lab.ssh(host, "systemd-run --unit=shared-name /bin/sleep infinity", check=True)
    lab.ssh("srv1", "systemctl stop shared-name", check=True)
    states = {h: lab.ssh(h, "systemctl is-active shared-name").stdout.strip() for h in HOSTS}
    assert states == {"boot1": "active", "srv1": "inactive", "srv2": "active"}


def test_close_leaves_no_process_mount_or_namespace(lab_factory: LabFactory) -> None:
    lab = lab_factory(["solo1", "solo2"])
    inventory = lab.write_inventory(lab.workdir / "inventory.ini")
    # Leaves ssh ControlPersist masters running in the lab namespace: close() must reap them too.
    ping = lab.run_controller(
        ["ansible", "-i", str(inventory), "lab", "-m", "ansible.builtin.ping"]
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert len(nspawn_pids(lab.rid)) == 2
    assert traces(lab.rid)

    lab.close()

    assert traces(lab.rid) == []
    assert lab.netns not in Path("/proc/mounts").read_text()


# --- crashes: a lab owned by another process that dies ------------------------------------------

CHILD = """
import sys, time
from tests.lab.labhosts import Lab
lab = Lab(["crash1"]).start()
print(lab.rid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def child_lab(lab_base: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A process that boots a one-host lab, prints its run id and waits to be killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    rid = proc.stdout.readline().strip()
    try:
        assert rid and nspawn_pids(rid), "the child lab did not come up"
        yield proc, rid
    finally:
        proc.kill()
        proc.wait()
        cleanup_stale()


def test_sigterm_to_the_test_process_tears_the_lab_down(
    child_lab: tuple[subprocess.Popen[str], str],
) -> None:
    proc, rid = child_lab
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    assert traces(rid) == []


def test_leftovers_of_a_killed_run_are_cleaned_by_the_next(
    child_lab: tuple[subprocess.Popen[str], str],
) -> None:
    proc, rid = child_lab
    proc.kill()
    proc.wait()
    assert any(t.startswith("systemd-nspawn") for t in traces(rid))  # SIGKILL cleans nothing

    assert rid in cleanup_stale()

    assert traces(rid) == []


def test_a_host_that_cannot_boot_fails_with_its_console(lab_base: Path, tmp_path: Path) -> None:
    not_an_os = tmp_path / "rootfs"
    for folder in ("etc/ssh/sshd_config.d", "root"):
        (not_an_os / folder).mkdir(parents=True)
    lab = Lab(["broken"], base=not_an_os, boot_timeout=30)

    with pytest.raises(BootError, match=r"(?s)broken: systemd-nspawn exited.*broken console"):
        lab.start()

    assert lab.rid and traces(lab.rid) == []


# --- pure helpers ------------------------------------------------------------------------------


def test_parse_recap_reads_the_last_recap() -> None:
    output = """PLAY RECAP *********
old : ok=1 changed=1 unreachable=0 failed=0
PLAY [again] ***
PLAY RECAP *********************************************************************
srv1                       : ok=4    changed=3    unreachable=0    failed=0    skipped=0
srv2                       : ok=0    changed=0    unreachable=1    failed=0    skipped=0
"""
    assert parse_recap(output) == {
        "srv1": {"ok": 4, "changed": 3, "unreachable": 0, "failed": 0, "skipped": 0},
        "srv2": {"ok": 0, "changed": 0, "unreachable": 1, "failed": 0, "skipped": 0},
    }
    assert parse_recap("ERROR! the playbook could not be found") == {}


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ([], "10.213.0.0/24"),
        (["192.0.2.0/24", "10.213.0.0/24"], "10.213.1.0/24"),
        (["10.213.0.0/23", "10.213.2.7/32"], "10.213.3.0/24"),
    ],
)
def test_pick_subnet_avoids_the_machines_networks(taken: list[str], expected: str) -> None:
    assert str(pick_subnet([ipaddress.IPv4Network(n) for n in taken])) == expected


def test_apt_mirror_reads_both_source_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PETALS_LAB_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "security.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n"
    )
    (tmp_path / "sources.list.d" / "off.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
        "Components: main\n"
    )
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] http://mirror.example/debian/ bookworm main contrib\n"
    )
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "main.sources").write_text(
        "Types: deb deb-src\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert apt_mirror(tmp_path) == "http://deb.example/debian"
