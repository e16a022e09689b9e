"""Lab hosts: real systemd machines (systemd-nspawn) on a private bridge, to converge playbooks on.

A Lab boots one container per host from the cached base rootfs (rootfs.py), each on its own
copy-on-write overlay, plugs them into a bridge inside a network namespace that has no route out,
and runs the controller (ansible-playbook, probes) inside that namespace. Teardown and the
cleanup of crashed runs live in reaper.py.

Errors: LabError, the base of BaseBuildError (mmdebstrap failed) and BootError (a host did not come
up; the message carries the tail of its console).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from tests.lab import reaper
from tests.lab.rootfs import REPO_ROOT, BaseBuildError, LabError, base_rootfs, run
from tests.stacks import run_showing_stacks

__all__ = [
    "REPO_ROOT", "BaseBuildError", "BootError", "Lab", "LabError", "LabFactory", "base_rootfs",
    "parse_recap", "pick_subnet",
]  # fmt: skip

log = logging.getLogger(__name__)

SUBNET_CANDIDATES = tuple(ipaddress.IPv4Network(f"10.213.{i}.0/24") for i in range(256))
CONTROLLER = "controller"
MEMBER_OFFSET, OUTSIDER_OFFSET = 10, 200  # members .10 to .109 (the trusted half), outsiders .200+
SSH_OPTS = (
    "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
)  # fmt: skip
_HOSTNAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_GROUP = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RECAP_LINE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")


class BootError(LabError):
    """A host did not reach a running system in time."""


def pick_subnet(taken: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first 10.213.x.0/24 that overlaps none of taken."""
    for net in SUBNET_CANDIDATES:
        if not any(net.overlaps(t) for t in taken):
            return net
    raise LabError("every 10.213.x.0/24 overlaps a network of this machine; pass subnet=")


def machine_networks() -> list[ipaddress.IPv4Network]:
    """Networks of this machine's addresses and routes, the default route aside."""
    nets = []
    for link in json.loads(run("ip", "-4", "-j", "addr").stdout):
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network)
    for route in json.loads(run("ip", "-4", "-j", "route").stdout):
        if route["dst"] != "default":
            nets.append(ipaddress.IPv4Network(route["dst"], strict=False))
    return nets


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The last PLAY RECAP of ansible-playbook output: {host: {"ok": n, "changed": n, ...}}."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")]
    recap = {}
    for line in lines[starts[-1] + 1 :] if starts else []:
        if m := _RECAP_LINE.match(line.strip()):
            recap[m.group(1)] = {k: int(v) for k, v in (p.split("=") for p in m.group(2).split())}
    return recap


# Labs not yet closed, torn down at exit and on SIGTERM/SIGINT even if no __exit__ runs.
_OPEN: set[Lab] = set()
_PREVIOUS_HANDLERS: dict[int, Any] = {}


def _close_all() -> None:
    for lab in list(_OPEN):
        lab.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _close_all()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # SIGINT: Python's handler raises KeyboardInterrupt
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # die of the signal, as if we had never caught it


def _install_handlers() -> None:
    if _PREVIOUS_HANDLERS or threading.current_thread() is not threading.main_thread():
        return
    atexit.register(_close_all)
    for sig in (signal.SIGTERM, signal.SIGINT):
        _PREVIOUS_HANDLERS[sig] = signal.signal(sig, _on_signal)


class Lab:
    """Booted systemd hosts on one bridge; a context manager (or start()/close()).

    hosts are the lab members (addresses in trusted_cidr); outsiders share the bridge with an
    address outside it, for firewall tests. bind_ro maps machine paths to read-only paths inside
    every host (a wheelhouse, a model directory).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        outsiders: Sequence[str] = (),
        subnet: str | None = None,
        bind_ro: Mapping[str | os.PathLike[str], str] | None = None,
        boot_timeout: float = 90.0,
        stop_timeout: float = 20.0,
        base: Path | None = None,
        work_root: Path = reaper.WORK_ROOT,
    ) -> None:
        names = [*hosts, *outsiders]
        for name in names:
            if not _HOSTNAME.match(name) or name == CONTROLLER:
                raise LabError(
                    f"host name {name!r}: want [a-z][a-z0-9-]*, 31 at most, not 'controller'"
                )
        if not hosts or len(set(names)) != len(names) or len(hosts) > 90 or len(outsiders) > 50:
            raise LabError(
                f"hosts: want 1 to 90 members and 50 outsiders at most, unique; got {names}"
            )
        self.members, self.outsiders = list(hosts), list(outsiders)
        self.bind_ro = {str(Path(src).resolve()): dst for src, dst in (bind_ro or {}).items()}
        for src, dst in self.bind_ro.items():
            if not Path(src).exists() or not dst.startswith("/") or ":" in src + dst:
                raise LabError(
                    f"bind_ro {src!r} -> {dst!r}: want an existing source, absolute target"
                )
        try:
            self.subnet = ipaddress.IPv4Network(subnet or SUBNET_CANDIDATES[0])
        except ValueError as exc:
            raise LabError(f"subnet {subnet!r}: {exc}; want e.g. 10.213.7.0/24") from None
        self._subnet_given = subnet is not None
        self.boot_timeout, self.stop_timeout = boot_timeout, stop_timeout
        self._base, self.work_root = base, work_root
        self.rid, self.workdir = "", Path()
        self.states: dict[str, str] = {}  # systemd state of each host once booted
        self.timings: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()

    # names and addresses
    @property
    def all_hosts(self) -> list[str]:
        return [*self.members, *self.outsiders]

    @property
    def netns(self) -> str:
        """The controller's namespace (holds the bridge)."""
        return f"{reaper.NETNS_PREFIX}{self.rid}"

    def host_netns(self, host: str) -> str:
        return f"{self.netns}-{host}"

    @property
    def trusted_cidr(self) -> ipaddress.IPv4Network:
        """The lower half of the subnet: controller and members inside, outsiders not."""
        return next(self.subnet.subnets(prefixlen_diff=1))

    @property
    def controller_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    def ip(self, host: str) -> str:
        if host == CONTROLLER:
            return self.controller_ip
        if host in self.members:
            return str(self.subnet.network_address + MEMBER_OFFSET + self.members.index(host))
        if host in self.outsiders:
            return str(self.subnet.network_address + OUTSIDER_OFFSET + self.outsiders.index(host))
        raise LabError(f"{host!r} is not a host of this lab ({', '.join(self.all_hosts)})")

    @property
    def key_path(self) -> Path:
        return self.workdir / "id_ed25519"

    @property
    def ansible_cfg(self) -> Path:
        return self.workdir / "ansible.cfg"

    # lifecycle
    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Lab:
        if os.geteuid() != 0:
            raise LabError(
                "the lab needs root (network namespaces, overlay mounts, systemd-nspawn)"
            )
        base = self._base or base_rootfs()
        taken = machine_networks()
        if not self._subnet_given:
            self.subnet = pick_subnet(taken)
        elif self.subnet.prefixlen > 24 or any(n.overlaps(self.subnet) for n in taken):
            raise LabError(
                f"subnet {self.subnet}: want a /24 or larger that overlaps none of {taken}"
            )
        reaper.cleanup_stale(self.work_root)
        _install_handlers()
        started = time.monotonic()
        with self._lock:
            self.rid, self.workdir = reaper.claim_workdir(self.work_root)
            _OPEN.add(self)
        try:
            self._write_controller_files()
            self._make_network()
            for host in self.all_hosts:
                self._prepare_rootfs(host, base)
                self._boot(host)
            deadline = time.monotonic() + self.boot_timeout
            with ThreadPoolExecutor(max_workers=len(self.all_hosts)) as pool:
                futures = {h: pool.submit(self._wait_ready, h, deadline) for h in self.all_hosts}
                self.states = {h: f.result() for h, f in futures.items()}
        except BaseException:
            self.close()
            raise
        self.timings["boot"] = time.monotonic() - started
        log.info("lab %s up in %.1fs: %s", self.rid, self.timings["boot"], self.states)
        return self

    def close(self) -> None:
        """Stop every host, then remove namespaces, mounts and files. Idempotent."""
        with self._lock:
            if self not in _OPEN:
                return
            reaper.stop_controller_processes(self.rid)
            for host in self._procs:
                self.stop_host(host, wait=False)
            deadline = time.monotonic() + self.stop_timeout
            for host, proc in self._procs.items():
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("lab %s: %s ignored SIGTERM, killing it", self.rid, host)
                    proc.kill()
                    proc.wait()
            reaper.teardown_run(self.rid, self.work_root, self.stop_timeout)
            _OPEN.discard(self)

    def stop_host(self, host: str, *, wait: bool = True) -> None:
        """Shut a host down cleanly (SIGTERM to its nspawn). Its overlay keeps its state."""
        proc = self._procs[host]
        if proc.poll() is None:
            proc.terminate()
        if wait:
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def is_running(self, host: str) -> bool:
        """Whether the host's nspawn is up (False after stop_host)."""
        return self._procs[host].poll() is None

    def start_host(self, host: str) -> str:
        """Boot a stopped host again; returns its systemd state once it is up."""
        if self._procs[host].poll() is None:
            raise LabError(f"{host} is running; stop_host() it first")
        self._boot(host)
        self.states[host] = self._wait_ready(host, time.monotonic() + self.boot_timeout)
        return self.states[host]

    # setup
    def _write_controller_files(self) -> None:
        keygen = ("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.netns)
        run(*keygen, "-f", str(self.key_path))
        # Everything Ansible writes on the controller (ssh control sockets, temp files) stays in
        # the run's work dir and goes with it.
        self.ansible_cfg.write_text(
            f"# Written by tests/lab/labhosts.py for lab run {self.rid}.\n"
            "[defaults]\nhost_key_checking = False\ninterpreter_python = /usr/bin/python3\n"
            f"forks = {max(4, 2 * (os.cpu_count() or 1))}\nretry_files_enabled = False\n"
            f"local_tmp = {self.workdir}/ansible-tmp\nnocolor = True\ntimeout = 10\n\n"
            f"[ssh_connection]\npipelining = True\ncontrol_path_dir = {self.workdir}/cp\n"
            "ssh_args = -o ControlMaster=auto -o ControlPersist=60s\n"
        )

    def _make_network(self) -> None:
        lab, prefix = self.netns, self.subnet.prefixlen
        run("ip", "netns", "add", lab)
        run("ip", "-n", lab, "link", "set", "lo", "up")
        run("ip", "-n", lab, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", lab, "addr", "add", f"{self.controller_ip}/{prefix}", "dev", "br0")
        run("ip", "-n", lab, "link", "set", "br0", "up")
        for i, host in enumerate(self.all_hosts):
            ns, port = self.host_netns(host), f"v{i}"
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            # Both ends are created inside namespaces: nothing appears on the machine's own links.
            veth = ("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", lab, *veth)
            run("ip", "-n", lab, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"{self.ip(host)}/{prefix}", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")

    def _prepare_rootfs(self, host: str, base: Path) -> None:
        hdir = self.workdir / "hosts" / host
        for sub in ("upper", "work", "merged"):
            (hdir / sub).mkdir(parents=True)
        opts = f"lowerdir={base},upperdir={hdir / 'upper'},workdir={hdir / 'work'}"
        run("mount", "-t", "overlay", "overlay", "-o", opts, str(hdir / "merged"))
        root = hdir / "merged"
        (root / "etc/hostname").write_text(f"{host}\n")
        (root / "etc/machine-id").write_text(f"{uuid.uuid4().hex}\n")  # the base's is empty
        names = [(self.controller_ip, CONTROLLER)] + [(self.ip(h), h) for h in self.all_hosts]
        (root / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n" + "".join(f"{ip}\t{n}\n" for ip, n in names)
        )
        (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        keys = root / "root/.ssh/authorized_keys"
        keys.write_text(self.key_path.with_suffix(".pub").read_text())
        keys.chmod(0o600)
        (root / "etc/ssh/sshd_config.d/lab.conf").write_text(
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
        )

    def _boot(self, host: str) -> None:
        hdir = self.workdir / "hosts" / host
        cmd = [
            "systemd-nspawn", "-D", str(hdir / "merged"), "-b", "--console=passive",
            # The machine name carries the run id: nspawn keeps per-machine state in /run.
            f"--machine={host}-{self.rid}",
            f"--network-namespace-path=/run/netns/{self.host_netns(host)}",
            # No machined on these machines: without these nspawn tries to register over D-Bus.
            "--register=no", "--keep-unit", "--settings=no", "--link-journal=no",
            *(f"--bind-ro={src}:{dst}" for src, dst in self.bind_ro.items()),
        ]  # fmt: skip
        # With no machined to give it a scope, nspawn puts its container below its own cgroup:
        # hosts started from one cgroup would share /payload/system.slice/<unit>, and systemd on
        # one host would kill or fail the units of another. So each starts in a cgroup of its own.
        cgroups = [root / self.netns / host for root in reaper.cgroup_roots()]
        for cgroup in cgroups:
            reaper.remove_cgroup_tree(cgroup)  # what a previous boot of this host left
            cgroup.mkdir(parents=True)
        enter = "".join(f"echo $$ > {shlex.quote(str(cg / 'cgroup.procs'))} && " for cg in cgroups)
        with (hdir / "console.log").open("ab") as console:
            # A session of its own: the terminal's Ctrl-C reaches us, and we stop the hosts.
            self._procs[host] = subprocess.Popen(
                ["sh", "-c", f'{enter}exec "$@"', "sh", *cmd],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                start_new_session=True,
            )

    def _wait_ready(self, host: str, deadline: float) -> str:
        proc, last = self._procs[host], "no answer"
        while True:
            if proc.poll() is not None:
                last = f"systemd-nspawn exited {proc.returncode}"
                raise BootError(f"{host}: {last}\n{self.console_tail(host)}")
            if time.monotonic() > deadline:
                last = f"not up within {self.boot_timeout:.0f}s ({last})"
                raise BootError(f"{host}: {last}\n{self.console_tail(host)}")
            try:
                timeout = max(1.0, deadline - time.monotonic())
                res = self.ssh(
                    host, "systemctl is-system-running --wait", timeout=timeout, connect_timeout=2
                )
            except subprocess.TimeoutExpired:
                continue
            state = res.stdout.strip()
            if state in ("running", "degraded"):
                return state
            if state in ("maintenance", "stopping", "offline"):
                raise BootError(f"{host}: systemd is {state}\n{self.console_tail(host)}")
            last = state or res.stderr.strip() or f"ssh exited {res.returncode}"
            time.sleep(0.2)

    def console_tail(self, host: str, lines: int = 40) -> str:
        """The last lines the host wrote to its console (boot messages, failed units)."""
        path = self.workdir / "hosts" / host / "console.log"
        text = path.read_bytes().decode(errors="replace") if path.exists() else ""
        return f"--- {host} console, last {lines} lines ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    # running things
    def controller_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """os.environ, this venv's bin first on PATH, ANSIBLE_CONFIG; then env on top."""
        merged = dict(os.environ)
        merged["PATH"] = f"{Path(sys.executable).parent}:{merged.get('PATH', '/usr/bin:/bin')}"
        merged["ANSIBLE_CONFIG"] = str(self.ansible_cfg)
        return merged | dict(env or {})

    def run_controller(
        self,
        cmd: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        timeout: float | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd (an argv, or a string for bash -c) in the lab namespace; output as text."""
        argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if timeout is not None and not check:  # a hung Python child shows its stacks (exec'd by ip)
            return run_showing_stacks(
                ["ip", "netns", "exec", self.netns, *argv], timeout=timeout, cwd=cwd,
                env=self.controller_env(env), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, check=check,
            timeout=timeout, cwd=cwd, env=self.controller_env(env), stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def ssh(
        self,
        host: str,
        cmd: str,
        *,
        check: bool = False,
        timeout: float = 60,
        connect_timeout: int = 5,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on host as root, from the controller."""
        opts = [*SSH_OPTS, "-o", f"ConnectTimeout={connect_timeout}", "-i", str(self.key_path)]
        return self.run_controller(
            ["ssh", *opts, f"root@{self.ip(host)}", cmd], check=check, timeout=timeout
        )

    def write_inventory(
        self,
        path: str | os.PathLike[str],
        groups: Mapping[str, Sequence[str]] | None = None,
        hostvars: Mapping[str, Mapping[str, Any]] | None = None,
        group_vars: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Path:
        """Write an INI inventory of groups (default: every member in group `lab`).

        hostvars and group_vars go to host_vars/<host>.json and group_vars/<group>.json beside
        it, so lists, dicts and numbers arrive typed (INI would make most of them strings).
        """
        path = Path(path)
        groups = {"lab": self.members} if groups is None else groups
        lines = [
            f"# Written by tests/lab/labhosts.py for lab run {self.rid}.",
            "[all:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self.key_path}",
            f"ansible_ssh_common_args='{' '.join(SSH_OPTS[2:])}'",  # all hosts share host keys
            "ansible_python_interpreter=/usr/bin/python3",
        ]
        for group, hosts in groups.items():
            if not _GROUP.match(group):
                raise LabError(f"group name {group!r}: want letters, digits and _ only")
            lines += ["", f"[{group}]", *(f"{h} ansible_host={self.ip(h)}" for h in hosts)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        for folder, values in (("host_vars", hostvars or {}), ("group_vars", group_vars or {})):
            for name, variables in values.items():
                if folder == "host_vars":
                    self.ip(name)  # refuses unknown hosts
                (path.parent / folder).mkdir(exist_ok=True)
                (path.parent / folder / f"{name}.json").write_text(
                    json.dumps(dict(variables), indent=2)
                )
        return path

    def ansible_playbook(
        self,
        playbook: str | os.PathLike[str],
        inventory: str | os.PathLike[str],
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """ansible-playbook -i inventory playbook *args, on the controller."""
        cmd = ["ansible-playbook", "-i", str(inventory), str(playbook), *args]
        return self.run_controller(cmd, env=env, timeout=timeout)


# What the lab_factory fixture returns: lab_factory(hosts, **Lab options) -> a started Lab.
LabFactory = Callable[..., Lab]
