"""Finding and removing what a lab run leaves on the machine, including runs that crashed.

A run is known by its id: namespaces lab-<rid> and lab-<rid>-<host>, cgroups lab-<rid>/<host> at
the top of the systemd cgroup hierarchies, nspawn machines <host>-<rid>, and the work dir
WORK_ROOT/<rid> holding owner.json (pid and start time of the process that owns the run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.rootfs import locked, mounts_under, remove_tree, run

log = logging.getLogger(__name__)

WORK_ROOT = Path(os.environ.get("PETALS_LAB_WORKDIR", "/var/tmp/petals-lab"))
NETNS_PREFIX = "lab-"
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")
_RID = re.compile(r"[0-9a-f]{8}")
_NETNS_RID = re.compile(r"^lab-([0-9a-f]{8})(?:-|$)")


def new_rid() -> str:
    return os.urandom(4).hex()


def netns_list() -> list[str]:
    out = run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def run_namespaces(rid: str) -> list[str]:
    return [ns for ns in netns_list() if (m := _NETNS_RID.match(ns)) and m.group(1) == rid]


def netns_pids(ns: str) -> list[int]:
    return [int(p) for p in run("ip", "netns", "pids", ns, check=False).stdout.split()]


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (state first); [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (an exited orphan waits for init to reap it)."""
    state = _stat(pid)[:1]
    return bool(state) and state != ["Z"]


def start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else None


def terminate(pids: Sequence[int], timeout: float) -> None:
    """SIGTERM, wait up to timeout, then SIGKILL what is left (of processes not our children)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        pids = [p for p in pids if _alive(p)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)


def nspawn_pids(rid: str = "") -> list[int]:
    """Live systemd-nspawn processes booted by this harness: of run rid, or of any run."""
    needle = f"--network-namespace-path=/run/netns/{NETNS_PREFIX}{rid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else [b""]
        except OSError:
            continue
        if argv[0].endswith(b"systemd-nspawn") and any(a.startswith(needle) for a in argv):
            found.append(int(proc.name))
    return found


def cgroup_roots() -> list[Path]:
    """Mount points of the hierarchies systemd uses: the unified one and v1 name=systemd."""
    roots = []
    for line in Path("/proc/mounts").read_text().splitlines():
        _, target, fstype, options = line.split()[:4]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            roots.append(Path(target))
    return roots


def run_cgroups(rid: str) -> list[Path]:
    return [top for root in cgroup_roots() if (top := root / f"{NETNS_PREFIX}{rid}").is_dir()]


def remove_cgroup_tree(top: Path) -> None:
    """rmdir a cgroup and everything below it, deepest first (they must hold no process)."""
    for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def cgroup_pids(top: Path) -> list[int]:
    pids = []
    for procs in top.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def traces(rid: str, work_root: Path = WORK_ROOT) -> list[str]:
    """What is left of run rid on this machine; empty once it is torn down."""
    found = [f"systemd-nspawn pid {pid}" for pid in nspawn_pids(rid)]
    found += [f"netns {ns}" for ns in run_namespaces(rid)]
    found += [f"mount {target}" for target in mounts_under(work_root / rid)]
    found += [f"cgroup {top}" for top in run_cgroups(rid)]
    dirs = [work_root / rid, *NSPAWN_PROPAGATE.glob(f"*-{rid}")]
    return found + [f"dir {d}" for d in dirs if d.exists()]


def stop_controller_processes(rid: str) -> None:
    """Stop what still runs in the controller namespace: ssh ControlPersist masters, probes."""
    terminate(netns_pids(f"{NETNS_PREFIX}{rid}"), 2.0)


def teardown_run(rid: str, work_root: Path = WORK_ROOT, stop_timeout: float = 20.0) -> None:
    """Remove every trace of run rid: its nspawns, processes in its namespaces, mounts, files."""
    stop_controller_processes(rid)
    terminate(nspawn_pids(rid), stop_timeout)
    namespaces = run_namespaces(rid)
    for ns in namespaces:
        terminate(netns_pids(ns), 2.0)
    for top in run_cgroups(rid):  # a container process in a namespace of its own, if any
        terminate(cgroup_pids(top), 2.0)
    for ns in sorted(namespaces, key=len, reverse=True):
        run("ip", "netns", "del", ns, check=False)
    remove_tree(work_root / rid)
    for top in run_cgroups(rid):
        remove_cgroup_tree(top)
    for path in NSPAWN_PROPAGATE.glob(f"*-{rid}"):  # nspawn leaves it when it is killed
        with contextlib.suppress(OSError):
            path.rmdir()


def claim_workdir(work_root: Path = WORK_ROOT) -> tuple[str, Path]:
    """A fresh run id and its work dir, marked as owned by this process."""
    with locked(work_root / ".lock"):
        while True:
            rid = new_rid()
            with contextlib.suppress(FileExistsError):
                (work_root / rid).mkdir(mode=0o700)
                break
        owner = {"pid": os.getpid(), "start": start_time(os.getpid())}
        (work_root / rid / "owner.json").write_text(json.dumps(owner))
    return rid, work_root / rid


def _owner_alive(owner_file: Path) -> bool:
    try:
        owner = json.loads(owner_file.read_text())
    except (OSError, ValueError):
        return False
    return start_time(owner["pid"]) == owner["start"]


def cleanup_stale(work_root: Path = WORK_ROOT) -> list[str]:
    """Tear down the runs whose owning process is gone; returns their run ids."""
    with locked(work_root / ".lock"):
        rids = {m.group(1) for ns in netns_list() if (m := _NETNS_RID.match(ns))}
        rids |= {
            m.group(1)
            for r in cgroup_roots()
            for d in r.iterdir()
            if (m := _NETNS_RID.match(d.name))
        }
        rids |= {d.name for d in work_root.iterdir() if d.is_dir() and _RID.fullmatch(d.name)}
        stale = sorted(r for r in rids if not _owner_alive(work_root / r / "owner.json"))
        for rid in stale:
            log.warning("removing the leftovers of crashed lab run %s", rid)
            teardown_run(rid, work_root)
    return stale
