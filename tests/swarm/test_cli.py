"""`petalctl` as users run it: bad input is one clear line; bootstrap/serve/status/demo are real
process trees that leave nothing behind when stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm.identity import create_identity
from swarm.localswarm import free_port
from tests.stacks import run_showing_stacks
from tests.swarm.procs import LineReader, new_marker_env, processes_with_marker, wait_for

pytestmark = pytest.mark.swarm

PETALCTL = [sys.executable, "-m", "petalctl.main"]
PRIVATE_PEER = "QmYqpnb37uQgZZDmXyBdv1UVUZ221oupeLpnagyL1DxtYA"
BOOT = f"/ip4/127.0.0.1/tcp/9/p2p/{PRIVATE_PEER}"
PUBLIC = "/dns/bootstrap1.petals.dev/tcp/31337/p2p/QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGhCY"


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    if env is None:
        _, env = new_marker_env()
    return run_showing_stacks(PETALCTL + args, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    return create_identity(tmp_path_factory.mktemp("ids") / "server.id")


def bad_identity(tmp: Path, kind: str) -> Path:
    path = tmp / f"{kind}.id"
    if kind == "garbage":
        path.write_bytes(b"not a key")
        path.chmod(0o600)
    elif kind == "world-readable":
        path.write_bytes(b"x")
        path.chmod(0o644)
    return path  # "missing": never written


@pytest.mark.parametrize(
    "case, args, fragment",
    [
        ("missing bootstrap peers", [], "no bootstrap peers"),
        ("public peer", ["--initial-peers", PUBLIC], "PUBLIC Petals swarm"),
        ("malformed multiaddr", ["--initial-peers", "127.0.0.1:31337"], "not a TCP multiaddr"),
        (
            "missing model dir",
            ["--initial-peers", BOOT, "--model", "/nonexistent/tiny"],
            "model directory '/nonexistent/tiny' does not exist",
        ),
        (
            "block range outside",
            ["--initial-peers", BOOT, "--blocks", "6:12"],
            "outside the model: it has 8 blocks",
        ),
        ("bad dtype", ["--initial-peers", BOOT, "--torch-dtype", "fp8"], "torch_dtype = 'fp8'"),
    ],
)
def test_serve_bad_input_is_one_line(case, args, fragment, tmp_path, identity, tiny_model_dir):
    base = [
        "serve",
        "--model",
        str(tiny_model_dir),
        "--identity",
        str(identity.path),
        "--blocks",
        "0:4",
    ]
    result = run_cli(base + args, cwd=tmp_path)
    assert result.returncode == 2, (case, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("petalctl: error: ") and fragment in lines[-1], lines
    assert "Traceback" not in result.stderr
    assert sum(line.startswith("petalctl: error") for line in lines) == 1


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("missing", "does not exist; create it with `petalctl identity new"),
        ("garbage", "is not a peer key"),
        ("world-readable", "readable by others (mode 644); run `chmod 600"),
    ],
)
def test_unusable_identity_is_one_line(kind, fragment, tmp_path, tiny_model_dir):
    path = bad_identity(tmp_path, kind)
    result = run_cli(
        [
            "serve",
            "--model",
            str(tiny_model_dir),
            "--identity",
            str(path),
            "--blocks",
            "0:4",
            "--initial-peers",
            BOOT,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_identity_new_refuses_to_overwrite(tmp_path):
    first = run_cli(["identity", "new", str(tmp_path / "k.id")], cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.startswith("Qm")
    assert (tmp_path / "k.id").stat().st_mode & 0o777 == 0o600
    shown = run_cli(["identity", "show", str(tmp_path / "k.id")], cwd=tmp_path)
    assert shown.stdout == first.stdout
    again = run_cli(["identity", "new", str(tmp_path / "k.id")], cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_bootstrap_serve_status_and_clean_stop(tmp_path, tiny_model_dir):
    """The commands systemd units run: ready only when the DHT says so; SIGTERM leaves nothing."""
    marker, env = new_marker_env()
    boot = create_identity(tmp_path / "boot.id")
    servers = [create_identity(tmp_path / f"s{i}.id") for i in (1, 2)]
    port = free_port()
    peers = f"/ip4/127.0.0.1/tcp/{port}/p2p/{boot.peer_id}"
    common = ["--model", str(tiny_model_dir), "--dht-prefix", "clitest", "--initial-peers", peers]
    procs: list[subprocess.Popen[str]] = []
    try:
        bootstrap = subprocess.Popen(
            [
                *PETALCTL,
                "bootstrap",
                "--identity",
                str(boot.path),
                "--host-maddrs",
                f"/ip4/127.0.0.1/tcp/{port}",
                "--log-file",
                str(tmp_path / "boot.log"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(bootstrap)
        LineReader(bootstrap.stderr).wait_for("bootstrap peer ready", timeout=120)
        for ident, blocks in zip(servers, ("0:4", "4:8"), strict=True):
            procs.append(
                subprocess.Popen(
                    [
                        *PETALCTL,
                        "serve",
                        *common,
                        "--identity",
                        str(ident.path),
                        "--blocks",
                        blocks,
                        "--torch-dtype",
                        "float32",
                        "--public-name",
                        ident.path.stem,
                        "--log-file",
                        str(tmp_path / f"{ident.path.stem}.log"),
                    ],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs[1:]:
            LineReader(proc.stderr).wait_for("ready: blocks", timeout=240)
        # p2pd of the bootstrap and of both servers: no UPnP/NAT-PMP request to the router.
        p2pds = p2pd_command_lines(marker)
        assert len(p2pds) >= 3, p2pds
        assert all("-natPortMap=0" in argv for argv in p2pds), p2pds

        trusted = ["--trusted-servers", *(s.peer_id for s in servers)]
        status = run_cli(["status", *common, *trusted, "--json"], cwd=tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert '"covered": true' in status.stdout

        procs[2].send_signal(signal.SIGTERM)  # stop the server of blocks 4:8
        assert procs[2].wait(timeout=60) == 0
        # Graceful stop announced OFFLINE, so coverage drops at once (no expiry wait).
        status = run_cli(["status", *common, *trusted], cwd=tmp_path, env=env)
        assert status.returncode == 3
        assert "blocks 4-7: UNCOVERED" in status.stdout
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    # torch_shm_manager (started by torch in each process, in a session of its own) exits once
    # its last client has: poll briefly rather than expect it gone at the same instant.
    wait_for(lambda: processes_with_marker(marker) == [], 15, "every process to be gone")


def test_demo_sigint_leaves_no_process(tmp_path, tiny_model_dir):
    marker, env = new_marker_env()
    demo = subprocess.Popen(
        [*PETALCTL, "demo", "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "w")],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        LineReader(demo.stderr).wait_for("] ready", timeout=300)
        # The swarm runs: bootstrap + 2 servers + their p2pd, and the demo's own client DHT.
        assert len(processes_with_marker(marker)) >= 6
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=90) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    wait_for(lambda: processes_with_marker(marker) == [], 10, "every demo process to be gone")


def p2pd_command_lines(marker: str) -> list[list[str]]:
    lines = []
    for pid, _ in processes_with_marker(marker):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv and Path(argv[0].decode()).name == "p2pd":
                lines.append([a.decode() for a in argv if a])
    return lines


def latest_record(initial_peers: list[str], uid: str, peer_id: str) -> tuple[int, float] | None:
    """(state, expiration) of a server's latest record for one block, read with plain hivemind."""
    from swarm.dht import open_dht

    with open_dht(initial_peers) as dht:
        found = dht.get(uid, latest=True)
    if found is None or peer_id not in found.value:
        return None
    record = found.value[peer_id]
    return record.value[0], record.expiration_time  # petals' ServerInfo tuple starts with state


def test_a_server_restarted_after_a_crash_is_ready_only_once_it_announces_itself(
    tmp_path, tiny_model_dir, local_swarm
):
    """systemd restarts a crashed server with the same identity while the dead process's ONLINE
    record still lives (2 x update_period): readiness must come from the new process. Without
    --log-file the server's log reaches our stderr (the journal); the supervisor's SIGKILL leaves
    no orphans; p2pd maps no NAT port."""
    from petals.data_structures import ServerState

    from swarm.launch import record_lifetime

    marker, env = new_marker_env()
    ident = create_identity(tmp_path / "restart.id")
    update_period = 30.0  # the dead process's record outlives the restart below
    serve = [
        *PETALCTL,
        "serve",
        "--model",
        str(tiny_model_dir),
        "--dht-prefix",
        "restarttest",
        "--initial-peers",
        *local_swarm.initial_peers,
        "--identity",
        str(ident.path),
        "--blocks",
        "0:8",
        "--torch-dtype",
        "float32",
        "--update-period",
        str(update_period),
    ]

    def start() -> tuple[subprocess.Popen[str], LineReader]:
        proc = subprocess.Popen(
            serve, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        return proc, LineReader(proc.stderr)

    first, log = start()
    try:
        log.wait_for("ready: blocks", timeout=240)
        log.wait_for("private: no update check", timeout=1)  # the runner's log line, on stderr
        p2pds = p2pd_command_lines(marker)
        assert p2pds, "the server's p2pd should run"
        assert all("-natPortMap=0" in argv for argv in p2pds), p2pds

        first.kill()  # the supervisor crashes; its child notices and ends its own tree
        first.wait(timeout=10)
        wait_for(lambda: processes_with_marker(marker) == [], 30, "the orphaned server to end")
        stale = latest_record(local_swarm.initial_peers, "restarttest.7", ident.peer_id)
        assert stale is not None and stale[0] == ServerState.ONLINE.value, stale

        restarted_at = time.time()
        second, log = start()
        try:
            log.wait_for("ready: blocks", timeout=240)
            state, expiration = latest_record(
                local_swarm.initial_peers, "restarttest.7", ident.peer_id
            ) or (None, 0.0)
            assert state == ServerState.ONLINE.value
            # Stored by the restarted process: it expires a lifetime after the restart or later.
            assert expiration >= restarted_at + record_lifetime(update_period)
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=60) == 0
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
        for pid, _ in processes_with_marker(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_for(lambda: processes_with_marker(marker) == [], 15, "every process to be gone")
