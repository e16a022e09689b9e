"""`petalctl bootstrap` and `petalctl serve`: run one peer of the private swarm in the foreground.

Each supervises its Petals process tree: it validates everything first, starts the tree in its own
process group, reports ready only when the DHT shows it (the bootstrap answers a DHT join; the
server's blocks are announced ONLINE by the process just started, not by a previous run's record
that has not expired yet), tells systemd (Type=notify) when it is, forwards
SIGTERM/SIGINT as a graceful stop and reaps the whole tree.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from swarm.addresses import parse_multiaddr
from swarm.errors import EXIT_OK, ConfigError, ProcessError
from swarm.process import ManagedProcess
from swarm.settings_base import add_arguments
from swarm.swarm_settings import SwarmSettings

SERVER_FIELDS = (
    "model", "dht_prefix", "initial_peers", "torch_dtype", "quant_type",
    "host_maddrs", "announce_maddrs", "request_timeout",
)  # fmt: skip
BOOTSTRAP_FIELDS = ("initial_peers", "host_maddrs", "announce_maddrs")


def register(subparsers: argparse._SubParsersAction) -> None:
    boot = subparsers.add_parser(
        "bootstrap",
        help="run a DHT bootstrap peer of the private swarm (foreground)",
        description="Run a DHT bootstrap peer. Servers and clients join the swarm through its "
        "multiaddr /ip4/HOST/tcp/PORT/p2p/PEERID, which is printed when it is ready. A second "
        "bootstrap peer lists the first in --initial-peers.",
    )
    add_arguments(boot, SwarmSettings, BOOTSTRAP_FIELDS)
    boot.add_argument("--identity", required=True, help="peer key file (fixes the PeerID)")
    boot.add_argument("--log-file", help="write the peer's log here (default: inherit stderr)")
    boot.set_defaults(func=run_bootstrap)

    serve = subparsers.add_parser(
        "serve",
        help="run a Petals server for a block range of the private swarm (foreground)",
        description="Run one Petals server (one per GPU) for --blocks of the model. Ready when "
        "its blocks are announced ONLINE in the DHT; SIGTERM/SIGINT stop it gracefully and no "
        "process of its tree (p2pd included) is left.",
    )
    add_arguments(serve, SwarmSettings, SERVER_FIELDS)
    serve.add_argument("--blocks", required=True, help="block range START:END (END exclusive)")
    serve.add_argument("--identity", required=True, help="peer key file (fixes the PeerID)")
    serve.add_argument(
        "--throughput",
        type=float,
        default=10.0,
        help="announced tokens/s; a fixed number avoids petals' internet speed test (default: 10)",
    )
    serve.add_argument("--public-name", help="name shown in status and monitoring")
    serve.add_argument(
        "--update-period",
        type=float,
        default=60.0,
        help="seconds between DHT announcements; records expire after twice this (default: 60)",
    )
    serve.add_argument("--attn-cache-tokens", type=int, help="attention cache size in tokens")
    serve.add_argument("--cache-dir", help="where petals caches downloaded weights")
    serve.add_argument("--device", help="torch device, e.g. cuda:0 or cpu (default: petals picks)")
    serve.add_argument(
        "--ready-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the blocks to be ONLINE (default: 900; loading 70B is slow)",
    )
    serve.add_argument("--log-file", help="write the server's log here (default: inherit stderr)")
    serve.set_defaults(func=run_serve)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify units) our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


def _say(message: str) -> None:
    print(f"petalctl: {message}", file=sys.stderr, flush=True)


def _supervise(process: ManagedProcess, ready: Callable[[], None], what: str) -> int:
    """Wait for readiness, then for the child to exit or a signal; always reap the tree.

    A stop we were asked for (SIGTERM/SIGINT) exits 0, so systemd records a clean stop; the
    child dying on its own is a ProcessError (exit 4), so Restart=on-failure restarts it.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # also when started with SIGINT ignored
    try:
        ready()
        _sd_notify("READY=1")
        while process.is_running():
            time.sleep(0.5)
        code = process.poll()
        raise ProcessError(f"{what} exited with code {code}")
    except KeyboardInterrupt:
        _say(f"stopping {what}")
        _sd_notify("STOPPING=1")
        return EXIT_OK
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        process.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _log_path(args: argparse.Namespace) -> Path | None:
    return Path(args.log_file) if args.log_file else None


def run_bootstrap(args: argparse.Namespace) -> int:
    from swarm.dht import open_dht, wait_for_listener
    from swarm.identity import load_identity
    from swarm.launch import bootstrap_argv, start_bootstrap

    settings = SwarmSettings.from_args(args)
    identity = load_identity(args.identity)
    listen = [parse_multiaddr(m, field="host_maddrs") for m in settings.host_maddrs]
    if any(m.port == 0 for m in listen):
        raise ConfigError(
            "host_maddrs of a bootstrap peer need a fixed port (e.g. /ip4/0.0.0.0/tcp/31337): "
            "everyone else dials it"
        )
    others = [p for p in settings.initial_peers if not p.endswith(f"/p2p/{identity.peer_id}")]
    announced = settings.announce_maddrs or settings.host_maddrs
    argv = bootstrap_argv(
        identity_path=identity.path,
        host_maddrs=settings.host_maddrs,
        announce_maddrs=settings.announce_maddrs,
        initial_peers=others,
    )
    process = start_bootstrap("bootstrap peer", argv, log_path=_log_path(args))
    first = listen[0]
    dial_host = "127.0.0.1" if first.host in ("0.0.0.0", "::") else first.host
    own = f"/{first.proto}/{dial_host}/tcp/{first.port}/p2p/{identity.peer_id}"

    def alive() -> str | None:
        return None if process.is_running() else f"bootstrap peer exited ({process.poll()})"

    def ready() -> None:
        wait_for_listener(dial_host, first.port, timeout=60, check=alive)
        with open_dht([own]):
            pass  # a DHT client could join through it: it answers
        for maddr in announced:
            print(f"{maddr}/p2p/{identity.peer_id}", flush=True)
        _say(f"bootstrap peer ready (PeerID {identity.peer_id})")

    return _supervise(process, ready, "bootstrap peer")


def run_serve(args: argparse.Namespace) -> int:
    from swarm.dht import open_dht, wait_for_blocks
    from swarm.identity import load_identity
    from swarm.launch import (
        model_num_blocks,
        parse_block_range,
        record_lifetime,
        server_argv,
        start_server,
    )

    settings = SwarmSettings.from_args(args)
    initial_peers = settings.require_initial_peers()
    identity = load_identity(args.identity)
    num_blocks = model_num_blocks(settings.model)
    blocks = parse_block_range(args.blocks, num_blocks)
    argv = server_argv(
        settings,
        blocks=blocks,
        identity_path=identity.path,
        throughput=args.throughput,
        public_name=args.public_name,
        update_period=args.update_period,
        attn_cache_tokens=args.attn_cache_tokens,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        device=args.device,
    )
    # Records stored by this process expire after started + lifetime; a record of a previous
    # run with this identity (a crash, then a restart) expires earlier and must not count.
    started = time.time()  # DHT time is wall-clock time (hivemind's get_dht_time)
    process = start_server("server", argv, settings.model, log_path=_log_path(args))

    def alive() -> str | None:
        return None if process.is_running() else f"server exited ({process.poll()})"

    def ready() -> None:
        with open_dht(initial_peers, retry_for=args.ready_timeout, check=alive) as dht:
            wait_for_blocks(
                dht,
                settings.effective_dht_prefix,
                num_blocks,
                blocks=list(blocks),
                peer_ids=[identity.peer_id],
                timeout=args.ready_timeout,
                check=alive,
                expiring_after=started + record_lifetime(args.update_period),
            )
        _say(f"server {identity.peer_id} ready: blocks {blocks} ONLINE")

    return _supervise(process, ready, f"server for blocks {blocks}")
