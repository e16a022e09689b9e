"""A whole private swarm on one machine: a bootstrap peer and servers on 127.0.0.1.

Used by ``petalctl demo`` and the tests. Ports are picked free at start, identities are created in
the work directory, readiness comes from the network (the bootstrap's listener) and the DHT (every
block announced ONLINE by a trusted server), and ``stop()`` reaps every process tree it started.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swarm.coverage import ServerAnnouncement
from swarm.dht import open_dht, read_announcements, wait_for_blocks, wait_for_listener
from swarm.errors import ProcessError
from swarm.identity import Identity, create_identity, load_identity
from swarm.launch import (
    BlockRange,
    bootstrap_argv,
    model_num_blocks,
    server_argv,
    start_bootstrap,
    start_server,
)
from swarm.process import ManagedProcess
from swarm.swarm_settings import SwarmSettings

Progress = Callable[[str], None]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def split_blocks(num_blocks: int, num_servers: int) -> list[BlockRange]:
    """Contiguous, near-equal ranges covering every block once."""
    if not 1 <= num_servers <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks over {num_servers} servers")
    bounds = [round(i * num_blocks / num_servers) for i in range(num_servers + 1)]
    return [BlockRange(a, b) for a, b in itertools.pairwise(bounds)]


@dataclass
class ServerHandle:
    name: str
    identity: Identity
    blocks: BlockRange
    trusted: bool
    process: ManagedProcess
    port: int
    argv: list[str] = field(default_factory=list)


@dataclass
class LocalSwarm:
    model: str
    workdir: Path
    dht_prefix: str = "tiny"
    host: str = "127.0.0.1"
    torch_dtype: str = "float32"
    quant_type: str = "none"  # none, int8 or nf4 (bitsandbytes quantizes on CPU too)
    throughput: float = 10.0
    update_period: float = 10.0
    attn_cache_tokens: int | None = None  # per server (petals' default when None)
    progress: Progress | None = None
    bootstrap: ManagedProcess | None = None
    bootstrap_identity: Identity | None = None
    bootstrap_port: int = 0
    servers: list[ServerHandle] = field(default_factory=list)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def num_blocks(self) -> int:
        return model_num_blocks(self.model)

    @property
    def initial_peers(self) -> list[str]:
        if self.bootstrap_identity is None:
            raise ProcessError("the local swarm's bootstrap peer is not started")
        return [f"/ip4/{self.host}/tcp/{self.bootstrap_port}/p2p/{self.bootstrap_identity.peer_id}"]

    @property
    def trusted_peer_ids(self) -> list[str]:
        return [s.identity.peer_id for s in self.servers if s.trusted]

    def settings(self, **overrides: object) -> SwarmSettings:
        """Settings a client of this swarm would use (private peers, trusted servers only)."""
        values: dict[str, object] = {
            "model": self.model,
            "dht_prefix": self.dht_prefix,
            "initial_peers": self.initial_peers,
            "trusted_servers": self.trusted_peer_ids,
            "torch_dtype": self.torch_dtype,
        }
        values.update(overrides)
        return SwarmSettings.load(**values)  # type: ignore[arg-type]

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def _identity(self, name: str) -> Identity:
        path = self.workdir / f"{name}.id"
        return load_identity(path) if path.exists() else create_identity(path)

    def start_bootstrap(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap_identity = self._identity("bootstrap")
        self.bootstrap_port = free_port(self.host)
        self._say(f"starting the bootstrap peer on {self.host}:{self.bootstrap_port}")
        argv = bootstrap_argv(
            identity_path=self.bootstrap_identity.path,
            host_maddrs=[f"/ip4/{self.host}/tcp/{self.bootstrap_port}"],
        )
        self.bootstrap = start_bootstrap("bootstrap", argv, log_path=self.workdir / "bootstrap.log")
        wait_for_listener(self.host, self.bootstrap_port, timeout=60, check=self._check_alive)

    def add_server(
        self,
        blocks: BlockRange,
        *,
        name: str | None = None,
        trusted: bool = True,
        public_name: str | None = None,
    ) -> ServerHandle:
        """Start one more server (not waiting for it); untrusted ones simulate a rogue peer."""
        name = name or f"server{len(self.servers) + 1}"
        identity = self._identity(name)
        port = free_port(self.host)
        settings = SwarmSettings.load(
            model=self.model,
            dht_prefix=self.dht_prefix,
            initial_peers=self.initial_peers,
            host_maddrs=[f"/ip4/{self.host}/tcp/{port}"],
            torch_dtype=self.torch_dtype,
            quant_type=self.quant_type,
        )
        argv = server_argv(
            settings,
            blocks=blocks,
            identity_path=identity.path,
            throughput=self.throughput,
            public_name=public_name or name,
            update_period=self.update_period,
            attn_cache_tokens=self.attn_cache_tokens,
        )
        self._say(f"starting {name} for blocks {blocks} on {self.host}:{port}")
        process = start_server(name, argv, self.model, log_path=self.workdir / f"{name}.log")
        handle = ServerHandle(name, identity, blocks, trusted, process, port, argv)
        self.servers.append(handle)
        return handle

    def start(
        self, num_servers: int = 2, *, replication: int = 1, timeout: float = 180.0
    ) -> LocalSwarm:
        """Bootstrap + ``num_servers`` trusted servers splitting the blocks, each range served
        by ``replication`` servers (so ``num_servers * replication`` in all); wait until served."""
        try:
            self.start_bootstrap()
            for _ in range(replication):
                for blocks in split_blocks(self.num_blocks, num_servers):
                    self.add_server(blocks)
            self.wait_until_served(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def processes(self) -> list[ManagedProcess]:
        """The bootstrap peer's and every running server's process tree leaders."""
        return ([self.bootstrap] if self.bootstrap else []) + [s.process for s in self.servers]

    def _check_alive(self) -> str | None:
        for process in self.processes():
            if not process.is_running():
                tail = process.log_tail(8)
                return f"{process.name} exited with code {process.poll()}; last log lines:\n{tail}"
        return None

    def wait_until_served(
        self,
        *,
        timeout: float = 180.0,
        servers: Sequence[ServerHandle] | None = None,
    ) -> list[ServerAnnouncement]:
        """Poll the DHT until every block of the given servers (default: all trusted) is ONLINE."""
        chosen = list(servers) if servers is not None else [s for s in self.servers if s.trusted]
        blocks = sorted({b for s in chosen for b in s.blocks})
        started = time.monotonic()
        last_report = [0.0]

        def report(records: list[ServerAnnouncement]) -> None:
            now = time.monotonic() - started
            if now - last_report[0] >= 2.0:
                last_report[0] = now
                online = sum(1 for r in records if r.state == "online")
                self._say(f"waiting for servers: {online}/{len(chosen)} online ({now:.0f}s)")

        with open_dht(self.initial_peers) as dht:
            return wait_for_blocks(
                dht,
                self.dht_prefix,
                self.num_blocks,
                blocks=blocks,
                peer_ids=[s.identity.peer_id for s in chosen],
                timeout=timeout,
                check=self._check_alive,
                on_poll=report,
            )

    def announcements(self) -> list[ServerAnnouncement]:
        with open_dht(self.initial_peers) as dht:
            return read_announcements(dht, self.dht_prefix, self.num_blocks)

    # -- failures, for tests and benchmarks ------------------------------------------------------
    def kill_server(self, handle: ServerHandle) -> None:
        """Crash a server: SIGKILL to its whole tree (no OFFLINE announcement; its DHT record
        lingers until it expires). The handle stays, for ``restart_server``."""
        handle.process.kill()

    def pause_server(self, handle: ServerHandle) -> None:
        """Hang a server (SIGSTOP to its whole tree, p2pd included), like a wedged GPU."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.process.pid, signal.SIGSTOP)

    def resume_server(self, handle: ServerHandle) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.process.pid, signal.SIGCONT)

    def restart_server(self, handle: ServerHandle) -> ServerHandle:
        """Start a crashed server again with the same identity, blocks and port (not waiting)."""
        if handle.process.is_running():
            raise ProcessError(f"{handle.name} is still running; kill or stop it first")
        handle.process = start_server(
            handle.name, handle.argv, self.model, log_path=self.workdir / f"{handle.name}.log"
        )
        return handle

    def stop_server(self, handle: ServerHandle) -> None:
        handle.process.stop()
        self.servers.remove(handle)

    def stop(self) -> None:
        """Stop every server, then the bootstrap peer; reaps each whole process tree."""
        if self.servers:
            self._say(f"stopping {len(self.servers)} server(s)")
        for handle in self.servers:  # all at once: each needs a moment to announce OFFLINE
            if handle.process.is_running():
                self.resume_server(handle)  # a paused tree would never see the signal
            handle.process.request_stop()
        for handle in self.servers:
            handle.process.stop()
        self.servers.clear()
        if self.bootstrap is not None:
            self._say("stopping the bootstrap peer")
            self.bootstrap.stop()
            self.bootstrap = None
