"""The private swarm converged by playbooks/site.yml on nspawn hosts, shared by the playbook tests.

One lab per session (converging installs the runtime on four hosts and loads four real Petals
servers): a bootstrap host, three more server hosts (CPU mode, the tiny Llama, replication 2, so
two bootstrap peers and four server units hold the 8 blocks twice), and an outsider outside the
trusted network. On the controller's side: an alert sink, a stand-in public swarm, a package
index served from the wheelhouse (srv2 installs in pypi mode), and a fake Discord on boot1's
loopback for the bot. tests/lab/test_playbooks_converge.py only reads it;
test_playbooks_operations.py restarts, kills and finally purges, so it runs after (files run in
name order).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.lab import labhosts
from tests.lab.labhosts import REPO_ROOT, Lab, LabFactory

PLAYBOOKS = REPO_ROOT / "playbooks"
WHEELHOUSE = REPO_ROOT / "wheelhouse"
WHEELHOUSE_IN_LAB = "/opt/lab/wheelhouse"
SERVER_HOSTS = ["boot1", "srv1", "srv2", "srv3"]
BOOTSTRAP_HOSTS = ["boot1", "srv1"]
SERVICE_HOST = "boot1"  # health service, monitoring files, gateway and bot units
PUBLIC_HOST = "srv3"
PYPI_HOST = "srv2"  # installs the runtime from the lab's package index (the wheelhouse, served)
OUTSIDER = "out1"
NUM_BLOCKS = 8
# The controller runs the playbooks 5 hours west of UTC (a POSIX TZ string: no tzdata needed), as
# an admin's laptop may; the hosts run in UTC. Times the playbooks compute must not depend on it
# (the day-2 waits once waited for a snapshot from hours ahead, and hung until their timeout).
CONTROLLER_TZ = "LAB+5"
REPLICATION = 2
PETALCTL = str(Path(sys.executable).parent / "petalctl")

# Reads coverage from the DHT once a second through one long-lived client and prints a JSON line
# per sample: {"t": ..., "min": trusted online servers of the worst block, "per_block": [...]}.
SAMPLER = """
import json, sys, time
from swarm.swarm_settings import SwarmSettings
from swarm.coverage import servers_per_block
from swarm.dht import open_dht, read_announcements
settings = SwarmSettings.load()
with open_dht(settings.require_initial_peers(), retry_for=60) as dht:
    print(json.dumps({"ready": True}), flush=True)
    while True:
        started = time.time()
        try:
            records = read_announcements(dht, settings.effective_dht_prefix, NUM_BLOCKS)
            table = servers_per_block(records, NUM_BLOCKS, trusted=settings.trusted_servers)
            per_block = [len(servers) for servers in table]
            sample = {"t": started, "min": min(per_block), "per_block": per_block}
            print(json.dumps(sample), flush=True)
        except Exception as exc:
            print(json.dumps({"t": started, "error": repr(exc)}), flush=True)
        time.sleep(max(0.0, 1.0 - (time.time() - started)))
""".replace("NUM_BLOCKS", str(NUM_BLOCKS))


def cli_has(subcommand: str) -> bool:
    """Whether this checkout's petalctl has a subcommand (the services are built concurrently)."""
    res = subprocess.run([PETALCTL, subcommand, "--help"], capture_output=True, text=True)
    return res.returncode == 0


@dataclass
class SwarmLab:
    """A converged swarm: the lab, its inventory and the two site.yml runs."""

    lab: Lab
    inventory: Path
    vault_password_file: Path
    bot_token: str
    health: bool
    alert_sink: AlertSink
    gateway_token: str
    gateway_tls: dict[str, Path]
    stand_in: StandInPublicSwarm
    discord: LabDiscord
    package_index: PackageIndex
    swarm_toml: Path = Path()
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    # What the controller (trusted) and the outsider could connect to during the first site.yml.
    first_run_ports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def playbook(
        self, name: str, *args: str, timeout: float = 1200
    ) -> subprocess.CompletedProcess[str]:
        vault = ("--vault-password-file", str(self.vault_password_file))
        return self.lab.ansible_playbook(
            PLAYBOOKS / name, self.inventory, *vault, *args, timeout=timeout,
            env={"TZ": CONTROLLER_TZ},
        )  # fmt: skip

    @property
    def swarm_env(self) -> dict[str, str]:
        return {"PETALS_CONFIG": str(self.swarm_toml)}

    def status(self) -> tuple[int, dict[str, Any]]:
        """`petalctl status --json` from the controller: (exit code, document)."""
        res = self.lab.run_controller(
            [PETALCTL, "status", "--json"], env=self.swarm_env, timeout=120
        )
        try:
            return res.returncode, json.loads(res.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"petalctl status: {res.stdout}{res.stderr}") from None

    def replication(self) -> list[int]:
        """Trusted online servers per block, from the DHT."""
        _, doc = self.status()
        return [len(servers) for servers in doc["block_servers"]]

    def wait_for_replication(self, want: int, timeout: float = 240) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            per_block = self.replication()
            if min(per_block) >= want or time.monotonic() > deadline:
                return per_block
            time.sleep(2)

    def diagnose(self) -> str:
        """What the day-2 waits read, for a failure message: the health service's state and
        journal, and the DHT as `petalctl status` sees it."""
        parts = []
        state_url = f"http://{self.lab.ip(SERVICE_HOST)}:9160/api/v1/state"
        for title, cmd in (
            ("health state", f"curl -s -m 10 {state_url} | head -c 3000"),
            ("health journal", "journalctl -u petals-health --no-pager -n 60 | cut -c1-300"),
            ("server journals", "journalctl -u 'petals-server@*' --no-pager -n 30 | cut -c1-300"),
        ):
            try:
                res = self.lab.ssh(SERVICE_HOST, cmd, timeout=60)
                parts.append(f"== {title}:\n{res.stdout}{res.stderr}")
            except Exception as exc:  # a diagnosis must not hide the failure it explains
                parts.append(f"== {title}: {exc!r}")
        try:
            code, doc = self.status()
            parts.append(f"== petalctl status (exit {code}): {doc.get('block_servers')}")
        except Exception as exc:
            parts.append(f"== petalctl status: {exc!r}")
        return "\n".join(parts)

    def unit(self, host: str, unit: str, *props: str) -> dict[str, str]:
        """systemctl show properties of a unit on a host."""
        res = self.lab.ssh(host, f"systemctl show --property={','.join(props)} {unit}", check=True)
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)


# Alertmanager's webhook receiver in the lab: appends each POSTed body as one JSON line to the
# file given, and prints the port it listens on (the controller's lab address, any free port).
ALERT_SINK = """
import http.server, json, sys
out = open(sys.argv[2], "a")
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out.write(json.dumps({"path": self.path, "body": json.loads(body)}) + "\\n")
        out.flush()
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((sys.argv[1], 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class LabHttpServer:
    """An inline server script (its first line out: the port) in the lab namespace until close()."""

    def _start(self, lab: Lab, what: str, script: str, *args: str) -> str:
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.netns, sys.executable, "-c", script, lab.controller_ip,
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        port = self._proc.stdout.readline().strip()
        if not port.isdigit():
            self.close()
            raise AssertionError(f"the {what} did not start: {port!r}")
        return f"http://{lab.controller_ip}:{port}"

    def close(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.communicate(timeout=30)


class AlertSink(LabHttpServer):
    """ALERT_SINK running in the lab namespace until close()."""

    def __init__(self, lab: Lab, folder: Path) -> None:
        self.file = folder / "alerts.jsonl"
        self.file.touch()
        self.url = self._start(lab, "alert sink", ALERT_SINK, str(self.file)) + "/alertmanager"

    def received(self) -> list[dict[str, Any]]:
        """The webhook calls received so far."""
        return [json.loads(line) for line in self.file.read_text().splitlines() if line]


# A PEP 503 "simple" index of the wheelhouse's wheels (built by PackageIndex) served over HTTP on
# the controller's lab address; every request is logged as "CLIENT STATUS PATH".
PACKAGE_INDEX = """
import functools, http.server, sys
class Index(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        with open(sys.argv[3], "a") as log:
            log.write(f"{self.client_address[0]} {int(code)} {self.path}\\n")
    def log_message(self, *args):
        pass
handler = functools.partial(Index, directory=sys.argv[2])
server = http.server.ThreadingHTTPServer((sys.argv[1], 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class PackageIndex(LabHttpServer):
    """The wheelhouse as a package index on the lab network, for the runtime role's pypi mode."""

    def __init__(self, lab: Lab, wheelhouse: Path, folder: Path) -> None:
        root = folder / "index"
        (root / "simple").mkdir(parents=True)
        (root / "files").symlink_to(wheelhouse)
        projects: dict[str, list[str]] = {}
        for wheel in sorted(wheelhouse.glob("*.whl")):
            name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
            projects.setdefault(name, []).append(wheel.name)
        for name, wheels in projects.items():
            links = "".join(
                f'<a href="../../files/{urllib.parse.quote(w)}">{w}</a>\n' for w in wheels
            )
            (root / "simple" / name).mkdir()
            page = f"<html><body>\n{links}</body></html>\n"
            (root / "simple" / name / "index.html").write_text(page)
        self.log = folder / "index-requests.log"
        self.log.touch()
        self.url = self._start(lab, "package index", PACKAGE_INDEX, str(root), str(self.log))
        self.url += "/simple/"
        self.host = lab.controller_ip

    def requests(self) -> list[tuple[str, int, str]]:
        """(client address, HTTP status, path) of every request so far."""
        lines = self.log.read_text().splitlines()
        return [(ip, int(code), path) for ip, code, path in (line.split(" ", 2) for line in lines)]


class LabDiscord:
    """The fake Discord (tests/lab/fakediscord_lab.py) in a host's network namespace: the bot
    deployed there reaches it on 127.0.0.1, the only place its test settings accept."""

    def __init__(self, lab: Lab, host: str, token: str, folder: Path) -> None:
        self.log = folder / "fake-discord.log"
        with self.log.open("w") as errors:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.host_netns(host), sys.executable, "-m",
                 "tests.lab.fakediscord_lab"],
                env=lab.controller_env({"PYTHONPATH": str(REPO_ROOT), "LAB_DISCORD_TOKEN": token}),
                cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                text=True, start_new_session=True,
            )  # fmt: skip
        first = self.readline()
        try:
            urls = json.loads(first)
        except json.JSONDecodeError:
            self.close()
            raise AssertionError(
                f"the fake Discord did not start: {first!r}\n{self.log.read_text()[-3000:]}"
            ) from None
        self.api_base, self.gateway_url = urls["api_base"], urls["gateway_url"]

    def readline(self) -> str:
        assert self._proc.stdout is not None
        return self._proc.stdout.readline()

    def request(self, **command: Any) -> dict[str, Any]:
        """One command to the fake ("state", or "ask" with text and timeout); its answer."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        line = self.readline()
        if not line:
            raise AssertionError(f"the fake Discord exited: {self.log.read_text()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.communicate(timeout=30)


def lab_bot_token() -> str:
    """Shaped like a Discord bot token (the bot refuses anything else); hex digits only, so it
    can never spell a placeholder such as "your"."""
    return f"{secrets.token_hex(12)}.{secrets.token_hex(3)}.{secrets.token_hex(19)}"


def make_gateway_tls(folder: Path, address: str) -> dict[str, Path]:
    """A lab CA and a certificate for the gateway's address, signed by it (openssl)."""
    tls = folder / "tls"
    tls.mkdir()
    paths = {name: tls / name for name in ("ca.crt", "ca.key", "gateway.crt", "gateway.key")}
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    csr, ext = tls / "gateway.csr", tls / "gateway.ext"
    ext.write_text(
        f"subjectAltName=IP:{address}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    for cmd in (
        ["req", "-x509", *ec, "-keyout", paths["ca.key"], "-out", paths["ca.crt"], "-days", "2",
         "-subj", "/CN=petals lab CA"],
        ["req", *ec, "-keyout", paths["gateway.key"], "-out", csr, "-subj", f"/CN={address}"],
        ["x509", "-req", "-in", csr, "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"],
         "-CAcreateserial", "-out", paths["gateway.crt"], "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return paths


def gateway_token_hash(name: str, token: str) -> str:
    """NAME:sha256:HEX for petals_gateway_token_hashes, from the kit's own CLI."""
    res = subprocess.run(
        [PETALCTL, "gateway", "token", "hash", name], input=token + "\n",
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return res.stdout.strip()


# Tries a TCP connection to each HOST:PORT argument, all at once, every half second (every
# second when the firewall drops them: a try gives up after 1 s) and prints a JSON line whenever
# one's state changes ({"target", "open", "t"}); runs until killed.
PORT_WATCH = """
import asyncio, json, sys, time
async def is_open(host, port):
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True
async def main():
    targets = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[1:]]
    state = {}
    print(json.dumps({"ready": True}), flush=True)
    while True:
        started = time.monotonic()
        now = await asyncio.gather(*(is_open(h, p) for h, p in targets))
        for (h, p), is_up in zip(targets, now):
            if state.get((h, p)) != is_up:
                state[(h, p)] = is_up
                event = {"target": f"{h}:{p}", "open": is_up, "t": time.time()}
                print(json.dumps(event), flush=True)
        await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
asyncio.run(main())
"""


class PortWatch:
    """PORT_WATCH run from inside a network namespace (the controller's, or an outsider's)."""

    def __init__(self, netns: str, targets: list[str]) -> None:
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PORT_WATCH, *targets],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()
        if '"ready"' not in first:
            self.stop()
            raise AssertionError(f"the port watch did not start: {first!r}")

    def stop(self) -> list[dict[str, Any]]:
        """Stop watching; the state changes seen."""
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        out, _ = self._proc.communicate(timeout=30)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def kit_ports(lab: Lab) -> list[str]:
    """HOST:PORT of the kit's ports in the lab that the firewall keeps to the trusted network."""
    ports = [f"{lab.ip(h)}:31337" for h in BOOTSTRAP_HOSTS]
    ports += [f"{lab.ip(h)}:{p}" for h in SERVER_HOSTS for p in (31340, 9100)]
    ports += [f"{lab.ip(SERVICE_HOST)}:{p}" for p in (9160, 9090, 9093, 8443, 8095)]
    return ports


# The stand-in "public" swarm's DHT prefix: its lent server's blocks are announced under it.
STAND_IN_PREFIX = "lab-public-stand-in"
LENT_SERVER_ARGS = [
    "--num_blocks", "3", "--dht_prefix", STAND_IN_PREFIX, "--throughput", "1",
    "--torch_dtype", "float32", "--skip_reachability_check",
]  # fmt: skip
FREE_PORT = (
    "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])"
)


class StandInPublicSwarm:
    """A bootstrap peer of a separate swarm on the lab network (at the controller's address): the
    public Petals swarm as far as the lab's public contributor can tell."""

    def __init__(self, lab: Lab, folder: Path) -> None:
        from swarm.identity import create_identity
        from swarm.launch import bootstrap_argv, runner_command
        from swarm.process import ManagedProcess

        identity = create_identity(folder / "stand-in-bootstrap.id")
        port = lab.run_controller(
            [sys.executable, "-c", FREE_PORT, lab.controller_ip], check=True
        ).stdout.strip()
        address = f"/ip4/{lab.controller_ip}/tcp/{port}"
        argv = bootstrap_argv(identity_path=folder / "stand-in-bootstrap.id", host_maddrs=[address])
        self.log = folder / "stand-in-bootstrap.log"
        self.process = ManagedProcess(
            "stand-in public bootstrap",
            ["ip", "netns", "exec", lab.netns, *runner_command("dht", argv)],
            env=lab.controller_env({"PYTHONPATH": str(REPO_ROOT)}),
            log_path=self.log,
        ).start()
        self.multiaddr = f"{address}/p2p/{identity.peer_id}"

    def close(self) -> None:
        self.process.stop()


class CoverageSampler:
    """The SAMPLER script running in the lab namespace until stop()."""

    def __init__(self, swarm: SwarmLab) -> None:
        lab = swarm.lab
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.netns, sys.executable, "-c", SAMPLER],
            env=lab.controller_env({**swarm.swarm_env, "PYTHONPATH": str(REPO_ROOT)}),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()
        if '"ready"' not in first:
            self.stop()
            raise AssertionError(f"the coverage sampler did not start: {first!r}")

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling; the samples taken."""
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
        out, _ = self._proc.communicate(timeout=60)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class FirewallLab(Lab):
    """Lab hosts that may load nftables rules (the firewall role).

    systemd-nspawn keeps CAP_NET_ADMIN only with --private-network; a host joined to a network
    namespace by path, as the harness does, loses it and `nft` answers "Operation not
    permitted". Each host owns its namespace, so the capability reaches nothing outside it.
    (Better as a Lab option in labhosts.py; until then the nspawn command line gets it here.)
    """

    def _boot(self, host: str) -> None:
        popen = subprocess.Popen

        def with_net_admin(args: list[str], *rest: Any, **kwargs: Any) -> Any:
            if "systemd-nspawn" in args:
                at = args.index("systemd-nspawn") + 1
                args = [*args[:at], "--capability=CAP_NET_ADMIN", *args[at:]]
            return popen(args, *rest, **kwargs)

        with mock.patch.object(labhosts.subprocess, "Popen", with_net_admin):
            super()._boot(host)


def ensure_wheelhouse() -> Path:
    """./wheelhouse from `make wheelhouse`; the kit's own wheel rebuilt from this checkout."""
    needed = ("constraints.txt", "petals-stack.txt", "kit.txt")
    if not all((WHEELHOUSE / name).exists() for name in needed) or not list(
        WHEELHOUSE.glob("torch-*.whl")
    ):
        subprocess.run(["make", "wheelhouse"], cwd=REPO_ROOT, check=True)
        return WHEELHOUSE
    for old in WHEELHOUSE.glob("petals_swarm_kit-*.whl"):
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "-w", str(WHEELHOUSE), str(REPO_ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    return WHEELHOUSE


def window_far_from_now() -> tuple[str, str]:
    """A daily lending window that starts ~10 hours from now and lasts an hour."""
    start = datetime.datetime.now() + datetime.timedelta(hours=10)
    stop = start + datetime.timedelta(hours=1)
    return start.strftime("%H:%M"), stop.strftime("%H:%M")


def write_vault(folder: Path, token: str) -> Path:
    """group_vars/bot/vault.yml with the bot's token, encrypted by ansible-vault."""
    password = folder / "vault-password"
    password.write_text(secrets.token_urlsafe(24) + "\n")
    password.chmod(0o600)
    vault = folder / "group_vars" / "bot" / "vault.yml"
    vault.parent.mkdir(parents=True)
    vault.write_text(f"---\npetals_bot_discord_token: {token}\n")
    subprocess.run(
        [str(Path(sys.executable).parent / "ansible-vault"), "encrypt", "--vault-password-file",
         str(password), str(vault)],
        check=True, capture_output=True,
    )  # fmt: skip
    return password


def start_lab(lab_factory: LabFactory, model: str) -> Lab:
    """Boot the hosts with the wheelhouse and the model directory mounted read-only.

    The model directory sits at the same path on the hosts as here: the controller's planner and
    the servers read the same petals_model.
    """
    return lab_factory(
        SERVER_HOSTS,
        outsiders=[OUTSIDER],
        bind_ro={ensure_wheelhouse(): WHEELHOUSE_IN_LAB, model: model},
        boot_timeout=180,
    )


def write_lab_inventory(
    lab: Lab,
    folder: Path,
    model: str,
    token: str,
    helpers: tuple[AlertSink, StandInPublicSwarm, LabDiscord, PackageIndex],
) -> SwarmLab:
    """The inventory of the lab's swarm (CPU mode, replication 2) with a vaulted bot token, the
    bot on the fake Discord, the gateway behind TLS, Alertmanager posting to the sink and one
    server host installing from the package index."""
    sink, stand_in, discord, index = helpers
    gateway_token = "lab-gw-" + secrets.token_urlsafe(32)
    tls = make_gateway_tls(folder, lab.ip(SERVICE_HOST))
    health = cli_has("health")
    start, stop = window_far_from_now()
    inventory = lab.write_inventory(
        folder / "inventory.ini",
        groups={
            "dht_bootstrap": BOOTSTRAP_HOSTS,
            "gpu_servers": SERVER_HOSTS,
            "monitoring": [SERVICE_HOST],
            "gateway": [SERVICE_HOST],
            "bot": [SERVICE_HOST],
            "public_contributors": [PUBLIC_HOST],
        },
        group_vars={
            "all": {
                "petals_model": model,
                "petals_replication": REPLICATION,
                "petals_cpu_mode": True,
                "petals_cpu_memory_gib": 2,
                "petals_trusted_networks": [str(lab.trusted_cidr)],
                "petals_runtime_source": "wheelhouse",
                "petals_runtime_wheelhouse_dir": WHEELHOUSE_IN_LAB,
                "petals_server_ready_timeout": 600,
                # Prometheus, Alertmanager, node_exporter and caddy come from the distribution,
                # baked into the lab's rootfs (the hosts reach no package index); Grafana is not
                # managed. Alerts go to the lab's sink.
                "petals_monitoring_scrape_interval": "2s",
                "petals_monitoring_bot_webhook_url": sink.url,
                "petals_monitoring_gateway_ca_file": str(tls["ca.crt"]),
                "petals_health_state": "started" if health else "stopped",
                # Fresh coverage for the day-2 waits; fewer probe generations on 2 cores.
                "petals_health_env": {
                    "PETALS_HEALTH_REFRESH_INTERVAL_S": 2,
                    "PETALS_HEALTH_PROBE_INTERVAL_S": 300,
                },
                # A wait that never ends fails the playbook with the health service's answer
                # before the test's own timeout kills it (which shows no more than the task).
                "petals_day2_coverage_timeout": 480,
                "petals_gateway_tls": "caddy",
                "petals_gateway_tls_cert": str(tls["gateway.crt"]),
                "petals_gateway_tls_key": str(tls["gateway.key"]),
                "petals_gateway_token_hashes": [gateway_token_hash("lab", gateway_token)],
                # The bot logs in to the fake Discord on its host's loopback.
                "petals_bot_env": {
                    "PETALS_BOT_DISCORD_API_BASE": discord.api_base,
                    "PETALS_BOT_DISCORD_GATEWAY_URL": discord.gateway_url,
                    "PETALS_BOT_MAX_NEW_TOKENS": 12,
                },
                **({} if health else {"petals_day2_health_url": ""}),
            }
        },
        hostvars={
            PYPI_HOST: {
                "petals_runtime_source": "pypi",
                "petals_runtime_index_url": index.url,
                "petals_runtime_trusted_hosts": [index.host],
            },
            PUBLIC_HOST: {
                "petals_public_contributor_gpus": [1],
                "petals_public_contributor_window_start": start,
                "petals_public_contributor_window_stop": stop,
                # The stand-in public swarm, the tiny model on the CPU (run_server then needs
                # --num_blocks), and no calls to public services (the hosts reach none).
                "petals_public_contributor_initial_peers": [stand_in.multiaddr],
                "petals_public_contributor_model": model,
                "petals_public_contributor_extra_args": LENT_SERVER_ARGS,
            },
        },
    )
    vault = write_vault(folder, token)
    return SwarmLab(
        lab, inventory, vault, token, health, sink, gateway_token, tls, stand_in, discord, index
    )


def converge(swarm: SwarmLab) -> None:
    """site.yml twice (the second run must change nothing); then the clients' swarm.toml."""
    lab = swarm.lab
    for run in ("first", "second"):
        t0 = time.monotonic()
        watches = {}
        if run == "first":  # the firewall must close the ports before anything listens on them
            watches = {
                "trusted": PortWatch(lab.netns, kit_ports(lab)),
                "outsider": PortWatch(lab.host_netns(OUTSIDER), kit_ports(lab)),
            }
        try:
            swarm.runs[run] = res = swarm.playbook("site.yml")
        finally:
            for name, watch in watches.items():
                swarm.first_run_ports[name] = watch.stop()
        swarm.timings[f"site.yml {run}"] = time.monotonic() - t0
        if res.returncode != 0:
            pytest.fail(
                f"site.yml ({run} run) exited {res.returncode}:\n{res.stdout[-8000:]}\n"
                f"{res.stderr[-3000:]}",
                pytrace=False,
            )
    swarm.swarm_toml = swarm.inventory.parent / "swarm.toml"
    toml = swarm.lab.ssh(SERVICE_HOST, "cat /etc/petals/swarm.toml", check=True).stdout
    swarm.swarm_toml.write_text(toml)


@pytest.fixture(scope="session")
def swarm_lab(
    lab_base: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwarmLab]:
    started = time.monotonic()
    # The servers' units have PrivateTmp= (and ProtectHome=), so a clone under /tmp, /var/tmp or
    # /home would hide a model bind-mounted at its own path. Copy the tiny model (2 MB) to a path
    # the units can see, the same on the controller and the hosts, and remove it afterwards.
    shared_models = Path(f"/opt/petals-lab-models/{os.getpid()}")
    shared_models.mkdir(parents=True, exist_ok=True)
    model_copy = shared_models / tiny_model_dir.name
    shutil.copytree(tiny_model_dir.resolve(), model_copy, dirs_exist_ok=True)
    model = str(model_copy)
    labs: list[Lab] = []
    helpers: list[LabHttpServer | StandInPublicSwarm | LabDiscord] = []

    def factory(hosts: list[str], **options: Any) -> Lab:
        labs.append(FirewallLab(hosts, base=lab_base, **options))
        return labs[-1].start()

    try:
        lab = start_lab(factory, model)
        folder = tmp_path_factory.mktemp("inventory")
        token = lab_bot_token()
        sink = AlertSink(lab, folder)
        helpers.append(sink)
        stand_in = StandInPublicSwarm(lab, folder)
        helpers.append(stand_in)
        discord = LabDiscord(lab, SERVICE_HOST, token, folder)
        helpers.append(discord)
        index = PackageIndex(lab, WHEELHOUSE, folder)
        helpers.append(index)
        swarm = write_lab_inventory(lab, folder, model, token, (sink, stand_in, discord, index))
        swarm.timings["boot"] = time.monotonic() - started
        converge(swarm)
        yield swarm
    finally:
        for helper in helpers:
            helper.close()
        for lab in labs:
            lab.close()
        shutil.rmtree(shared_models, ignore_errors=True)
        with contextlib.suppress(OSError):
            shared_models.parent.rmdir()  # only when no other run uses it
    print(f"\nplaybook lab timings (s): { {k: round(v) for k, v in swarm.timings.items()} }")
