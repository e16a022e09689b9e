"""Fixtures of the client tests: one started SwarmClient on the session's loopback swarm, and
gateways served by uvicorn on 127.0.0.1 in a thread (real HTTP, real WebSockets)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client.gateway.settings import GatewaySettings
from client.gateway.tokens import add_token
from client.settings import ClientSettings
from client.swarm_client import SwarmClient
from swarm.localswarm import LocalSwarm
from tests.swarm.procs import wait_for


def poll(condition: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> object:
    """Wait until ``condition()`` is truthy (and return it), or fail saying ``what``."""
    return wait_for(condition, timeout, what, poll=every)


@pytest.fixture(scope="session")
def swarm_client(local_swarm: LocalSwarm) -> Iterator[SwarmClient]:
    with SwarmClient(local_swarm.settings(), ClientSettings()) as client:
        yield client


class GatewayServer:
    """A gateway app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        host, port = self.sock.getsockname()
        self.url = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.app = app

    def __enter__(self) -> GatewayServer:
        self.thread.start()
        poll(lambda: self.server.started, 60, "the gateway to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("gateway") / "tokens"
    return path, add_token(path, "tests")


@pytest.fixture(scope="session")
def gateway_factory(
    swarm_client: SwarmClient, tokens_file: tuple[Path, str]
) -> Iterator[Callable[..., GatewayServer]]:
    """``gateway_factory(**settings)``: a running gateway on the shared client."""
    from client.gateway.app import create_app

    started: list[GatewayServer] = []

    def make(**overrides: object) -> GatewayServer:
        values: dict[str, object] = {
            "tokens_file": tokens_file[0],
            "rate_limit_per_minute": 100000,
            "rate_limit_burst": 100000,
            "max_concurrent_per_token": 64,
        }
        values.update(overrides)
        settings = GatewaySettings.load(**values)  # type: ignore[arg-type]
        server = GatewayServer(create_app(settings, swarm_client)).__enter__()
        started.append(server)
        return server

    yield make
    for server in started:
        server.__exit__()


@pytest.fixture(scope="session")
def gateway(gateway_factory: Callable[..., GatewayServer]) -> GatewayServer:
    return gateway_factory(
        max_prompt_chars=4000, max_new_tokens_limit=200, default_max_new_tokens=64
    )


@pytest.fixture(scope="session")
def token(tokens_file: tuple[Path, str]) -> str:
    return tokens_file[1]


def inference_sessions(swarm: LocalSwarm, peer_suffix: str) -> dict[str, tuple[int, int]]:
    """Per server: (opened, closed) inference sessions of one client, read from the server's
    log, where petals writes one INFO line per rpc_inference open and close with the client's
    PeerID (last 6 characters)."""
    counts: dict[str, tuple[int, int]] = {}
    for handle in swarm.servers:
        text = (swarm.workdir / f"{handle.name}.log").read_text(errors="replace")
        tail = re.escape(peer_suffix)
        opened = len(
            re.findall(rf"rpc_inference\.open\(blocks=[^,]*, remote_peer=\.\.\.{tail}\)", text)
        )
        closed = len(
            re.findall(rf"rpc_inference\.close\(blocks=[^,]*, remote_peer=\.\.\.{tail}\)", text)
        )
        counts[handle.name] = (opened, closed)
    return counts


def client_peer_suffix(client: SwarmClient) -> str:
    peer_id = client.model.transformer.h.sequence_manager.state.p2p.peer_id
    return str(peer_id)[-6:]


# -- failover: a replicated swarm (two servers per block range) and a client on it ----------------
FAILOVER_SETTINGS = {
    "step_timeout": 10.0,
    "token_timeout": 3.0,
    "max_retries": 5,
    "recovery_timeout": 60.0,
}


@pytest.fixture(scope="session")
def replicated_swarm(swarm_factory: Callable[..., LocalSwarm]) -> LocalSwarm:
    """Four servers of the tiny model: blocks 0:4 on server1 and server3, 4:8 on server2 and
    server4. Tests may kill or pause servers but must ``heal()`` it before they end."""
    return swarm_factory(num_servers=2, replication=2, dht_prefix="tinyrep")


@pytest.fixture(scope="session")
def failover_client(replicated_swarm: LocalSwarm) -> Iterator[SwarmClient]:
    with SwarmClient(replicated_swarm.settings(), ClientSettings(**FAILOVER_SETTINGS)) as client:
        yield client


def heal(swarm: LocalSwarm) -> None:
    """Resume paused servers, restart crashed ones (same identity and port) and wait until
    each restarted one has announced itself ONLINE again (a crashed server's old ONLINE record
    lingers, so its expiration must grow first)."""
    from client.routes import record_expirations
    from swarm.dht import open_dht, read_announcements

    for handle in swarm.servers:
        swarm.resume_server(handle)
    crashed = [h for h in swarm.servers if not h.process.is_running()]
    if not crashed:
        return
    uids = [f"{swarm.dht_prefix}.{i}" for i in range(swarm.num_blocks)]
    peers = frozenset(h.identity.peer_id for h in crashed)
    with open_dht(swarm.initial_peers) as dht:
        before = record_expirations(dht, uids, peers)
        for handle in crashed:
            swarm.restart_server(handle)

        def announced_again() -> bool:
            now = record_expirations(dht, uids, peers)
            online = {
                r.peer_id
                for r in read_announcements(dht, swarm.dht_prefix, swarm.num_blocks)
                if r.state == "online"
            }
            return all(now.get(p, 0.0) > before.get(p, 0.0) and p in online for p in peers)

        poll(announced_again, 180, "the restarted servers to announce ONLINE", every=0.5)


def route_peers(client: SwarmClient) -> set[str]:
    """PeerIDs of the servers on the routes of the client's open sessions."""
    peers = set()
    for session in list(client._sessions):
        petals_session = session._session
        for span in getattr(petals_session, "_server_sessions", ()) or ():
            peers.add(str(span.span.peer_id))
    return peers
