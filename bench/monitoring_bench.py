"""Benchmark the health service: how long one refresh (a read of the swarm) takes and how fast
/metrics answers, on the live loopback swarm with 1, 2 and 4 servers and on synthetic DHT-like
records for a 70B-sized swarm (80 blocks, 32 servers), and on a real local DHT holding that many
announcements (80 blocks x 32 servers) read by the collector. Targets: refresh < 1 s, scrape
< 50 ms.

    .venv/bin/python -m bench.monitoring_bench [--reads 20] [--scrapes 200] [--skip-live]

Prints a table and writes bench/results/monitoring.json. The live runs start real swarms on
127.0.0.1 with the tiny model (about 20-60 s each on 2 cores); the probe is off so that scrape
figures measure the service, not a concurrent generation.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import percentile, write_results

REPO = Path(__file__).resolve().parents[1]
REFRESH_TARGET_S = 1.0
SCRAPE_TARGET_S = 0.050


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
    }


def timed(call: Callable[[], Any], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app under a real uvicorn on 127.0.0.1, on a thread of this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="bench-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def scrape_latency(url: str, scrapes: int) -> tuple[list[float], int]:
    """Seconds per GET /metrics on one keep-alive connection, and the exposition's size."""
    with httpx.Client(timeout=10) as client:
        size = len(client.get(f"{url}/metrics").content)  # warm-up
        samples = timed(lambda: client.get(f"{url}/metrics").raise_for_status(), scrapes)
    return samples, size


def wait_for_snapshot(status: Callable[[], Any], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while status().snapshot is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no snapshot after {timeout:.0f} s: {status().last_error}")
        time.sleep(0.1)


def live(num_servers: int, reads: int, scrapes: int, model_dir: Path) -> dict[str, Any]:
    from monitoring.service import build_service
    from monitoring.settings import HealthSettings
    from swarm.localswarm import LocalSwarm

    with tempfile.TemporaryDirectory(prefix="monitoring-bench-") as workdir:
        swarm = LocalSwarm(
            model=str(model_dir), workdir=Path(workdir), dht_prefix=f"bench{num_servers}"
        )
        with swarm:
            started = time.monotonic()
            swarm.start(num_servers, timeout=300)
            print(f"  {num_servers} server(s) up in {time.monotonic() - started:.0f} s", flush=True)
            health = HealthSettings(refresh_interval_s=3600, probe=False)
            service = build_service(swarm.settings(), health)
            try:
                first = timed(service.collector, 1)[0]  # joins the DHT
                refresh = timed(service.collector, reads)
                servers = len(service.collector().servers)
                with serving(service.app) as url:
                    wait_for_snapshot(service.refresher.status)
                    scrape, size = scrape_latency(url, scrapes)
            finally:
                service.close()
    return {
        "servers": num_servers,
        "servers_seen": servers,
        "first_refresh_ms_incl_dht_join": round(first * 1000, 1),
        "refresh": summary(refresh),
        "scrape": summary(scrape),
        "exposition_bytes": size,
    }


def synthetic_records(
    num_blocks: int, num_servers: int, span: int
) -> tuple[list[dict[str, dict[str, Any]]], dict[str, float], list[str]]:
    """Per-block {PeerID: info} maps as read from the DHT, round trips, trusted PeerIDs.

    Staggered spans of ``span`` blocks; the last two servers are untrusted, one is joining, one
    does not answer pings.
    """
    per_block: list[dict[str, dict[str, Any]]] = [{} for _ in range(num_blocks)]
    rtts: dict[str, float] = {}
    peers = [f"12D3KooWBench{i:04d}SyntheticPeerIdentityPadding{i:04d}" for i in range(num_servers)]
    for i, peer in enumerate(peers):
        start = i * (num_blocks - span) // max(1, num_servers - 1)
        info = {
            "state": "joining" if i == 5 else "online",
            "throughput": 400.0 + i,
            "start_block": start,
            "end_block": start + span,
            "public_name": f"gpu-{i:02d}",
            "version": "2.2.0.post1",
            "network_rps": 950.0,
            "forward_rps": 2100.0,
            "inference_rps": 310.0,
            "torch_dtype": "bfloat16",
            "quant_type": "nf4",
            "using_relay": i % 7 == 0,
            "cache_tokens_left": 65536,
        }
        for block in range(start, start + span):
            per_block[block][peer] = info
        rtts[peer] = float("inf") if i == 9 else 0.002
    return per_block, rtts, peers[:-2]


def synthetic(reads: int, scrapes: int, num_blocks: int = 80, num_servers: int = 32):
    from monitoring.app import build_app
    from monitoring.collector import build_snapshot
    from monitoring.settings import HealthSettings
    from swarm.coverage import merge_announcements

    per_block, rtts, trusted = synthetic_records(num_blocks, num_servers, span=20)

    def refresh() -> Any:
        # Everything a refresh does after the DHT answered: fold per-block records into one
        # per server, judge reachability and trust, validate the snapshot.
        started = time.monotonic()
        records = merge_announcements(per_block)
        return build_snapshot(
            records,
            rtts,
            model="petals-team/StableBeluga2",
            dht_prefix="StableBeluga2-hf",
            num_blocks=num_blocks,
            replication_target=2,
            trusted_peer_ids=trusted,
            taken_at=time.time(),
            refresh_seconds=time.monotonic() - started,
        )

    refresh_samples = timed(refresh, reads)
    app = build_app(
        HealthSettings(refresh_interval_s=3600, probe=False), refresh, "petals-team/StableBeluga2"
    )
    with serving(app) as url:
        wait_for_snapshot(app.state.refresher.status)
        format_samples = timed(app.state.metrics.exposition, scrapes)
        scrape, size = scrape_latency(url, scrapes)
        series = sum(
            1 for line in httpx.get(f"{url}/metrics").text.splitlines() if not line.startswith("#")
        )
    return {
        "blocks": num_blocks,
        "servers": num_servers,
        "refresh_cpu": summary(refresh_samples),
        "format_metrics": summary(format_samples),
        "scrape": summary(scrape),
        "exposition_bytes": size,
        "series": series,
    }


async def _store_announcements(
    entries: list[tuple[str, str, Any]], expiration: float, dht: Any, node: Any
) -> int:
    # Runs inside the DHT's process: one store_many for every (block uid, server) pair.
    keys, subkeys, values = zip(*entries, strict=True)
    stored = await node.store_many(list(keys), list(values), expiration, subkeys=list(subkeys))
    return sum(1 for ok in stored.values() if ok)


def fake_peer_ids(count: int) -> list[str]:
    """Valid PeerIDs (sha256 multihashes) for servers that exist only as DHT records."""
    import hashlib

    from hivemind.p2p import PeerID

    return [
        PeerID(b"\x12\x20" + hashlib.sha256(f"bench-server-{i}".encode()).digest()).to_base58()
        for i in range(count)
    ]


def real_dht(reads: int, num_blocks: int = 80, num_servers: int = 32, span: int = 20):
    """A real local DHT (a bootstrap-like node on 127.0.0.1) holding num_servers x span
    announcements over num_blocks blocks, read by the health service's own collector."""
    import functools

    from swarm import compat

    compat.apply()
    from hivemind import DHT, get_dht_time
    from petals.data_structures import ServerInfo, ServerState

    from monitoring.collector import DhtCollector
    from swarm.dht import read_announcements
    from swarm.swarm_settings import SwarmSettings

    prefix = "StableBeluga2-hf"
    peers = fake_peer_ids(num_servers)
    entries = []
    for i, peer in enumerate(peers):
        start = i * (num_blocks - span) // max(1, num_servers - 1)
        info = ServerInfo(
            state=ServerState.ONLINE, throughput=400.0 + i, start_block=start,
            end_block=start + span, public_name=f"gpu-{i:02d}", version="2.2.0.post1",
            torch_dtype="bfloat16", quant_type="nf4", using_relay=False,
            cache_tokens_left=65536, inference_rps=310.0, forward_rps=2100.0, network_rps=950.0,
        )  # fmt: skip
        entries += [(f"{prefix}.{b}", peer, info.to_tuple()) for b in range(start, start + span)]
    dht = DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    collector = None
    try:
        started = time.monotonic()
        # One server's announcements per call: a single huge message overflows the DHT's pipe.
        stored = sum(
            dht.run_coroutine(
                functools.partial(
                    _store_announcements, entries[i : i + span], get_dht_time() + 3600
                )
            )
            for i in range(0, len(entries), span)
        )
        store_s = time.monotonic() - started
        maddr = str(next(m for m in dht.get_visible_maddrs() if "127.0.0.1" in str(m)))
        settings = SwarmSettings.load(
            model="petals-team/StableBeluga2", dht_prefix=prefix, initial_peers=[maddr],
            trusted_servers=peers,
        )  # fmt: skip
        # The fake servers cannot answer pings (no p2p address is known for them, so each ping
        # fails at once rather than waiting the timeout): time the DHT read alone too.
        collector = DhtCollector(
            settings, num_blocks=num_blocks, replication_target=2, reachability_timeout_s=1.0
        )
        first = timed(collector, 1)[0]
        snap = collector()
        refresh = timed(collector, reads)
        reads_only = timed(lambda: read_announcements(collector._dht, prefix, num_blocks), reads)
    finally:
        if collector is not None:
            collector.close()
        dht.shutdown()
    return {
        "blocks": num_blocks,
        "servers": num_servers,
        "announcements_stored": f"{stored}/{len(entries)} (block, server) records",
        "store_s": round(store_s, 2),
        "servers_seen": len(snap.servers),
        "bootstrap_reachable": all(b.reachable for b in snap.bootstraps),
        "dht_read": summary(reads_only),
        "servers_unreachable": sum(1 for s in snap.servers if s.state == "unreachable"),
        "refresh_incl_pings": summary(refresh),
        "first_refresh_ms_incl_dht_join": round(first * 1000, 1),
    }


def verdict(ms: float, target_s: float) -> str:
    return "ok" if ms < target_s * 1000 else "OVER TARGET"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=20, help="refreshes timed per case")
    parser.add_argument("--scrapes", type=int, default=200, help="GET /metrics timed per case")
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-live", action="store_true", help="no loopback swarms")
    args = parser.parse_args(argv)
    # Importing petals sets the root logger to INFO; one line per timed request is noise here.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    results: dict[str, Any] = {
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "targets_ms": {"refresh": REFRESH_TARGET_S * 1000, "scrape": SCRAPE_TARGET_S * 1000},
        "live": [],
    }
    print("synthetic records: 80 blocks x 32 servers", flush=True)
    results["synthetic"] = synth = synthetic(args.reads * 5, args.scrapes)
    print(
        f"  refresh (CPU after the DHT read) median {synth['refresh_cpu']['median_ms']} ms, "
        f"p95 {synth['refresh_cpu']['p95_ms']} ms "
        f"[{verdict(synth['refresh_cpu']['p95_ms'], REFRESH_TARGET_S)}]\n"
        f"  /metrics median {synth['scrape']['median_ms']} ms, p95 {synth['scrape']['p95_ms']} ms "
        f"[{verdict(synth['scrape']['p95_ms'], SCRAPE_TARGET_S)}]; "
        f"{synth['series']} series, {synth['exposition_bytes']} bytes",
        flush=True,
    )
    print("real local DHT: 80 blocks x 32 servers announced, read by the collector", flush=True)
    results["real_dht"] = real = real_dht(args.reads)
    print(
        f"  {real['servers_seen']} servers seen; DHT read median {real['dht_read']['median_ms']} "
        f"ms, p95 {real['dht_read']['p95_ms']} ms "
        f"[{verdict(real['dht_read']['p95_ms'], REFRESH_TARGET_S)}]; whole refresh (DHT read, "
        f"pings, bootstrap ping) median {real['refresh_incl_pings']['median_ms']} ms",
        flush=True,
    )
    if not args.skip_live:
        from swarm.models.tiny import ensure_tiny_llama

        cache = Path(os.environ.get("PETALS_KIT_CACHE") or REPO / ".cache") / "models"
        model_dir = ensure_tiny_llama(cache)
        for n in args.servers:
            print(f"live loopback swarm, {n} server(s)", flush=True)
            row = live(n, args.reads, args.scrapes, model_dir)
            results["live"].append(row)
            refresh, scrape = row["refresh"], row["scrape"]
            print(
                f"  refresh median {refresh['median_ms']} ms, p95 {refresh['p95_ms']} ms "
                f"[{verdict(refresh['p95_ms'], REFRESH_TARGET_S)}] "
                f"(first, joining the DHT: {row['first_refresh_ms_incl_dht_join']} ms)\n"
                f"  /metrics median {scrape['median_ms']} ms, p95 {scrape['p95_ms']} ms "
                f"[{verdict(scrape['p95_ms'], SCRAPE_TARGET_S)}]",
                flush=True,
            )
    path = write_results("monitoring", results)
    print(f"written to {path.relative_to(REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
