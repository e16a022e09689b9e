"""`petalctl gpu-exporter`: GPU health for Prometheus with dcgm-exporter's metric names (NVML)."""

from __future__ import annotations

import argparse

DEFAULT_PORT = 9400  # dcgm-exporter's port: either exporter fits the same scrape target


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gpu-exporter",
        help="serve this host's GPU health on /metrics with dcgm-exporter's names (NVML)",
        description="Read every NVIDIA GPU of this host through NVML at each scrape and serve "
        "dcgm-exporter's families (DCGM_FI_DEV_GPU_TEMP, _FB_USED, _FB_FREE, _GPU_UTIL, "
        "_POWER_USAGE, _XID_ERRORS, _ECC_DBE_VOL_TOTAL, ... with gpu, UUID, device, modelName "
        "and Hostname labels), for hosts without dcgm-exporter. On a host without an NVIDIA "
        "driver or GPU it prints one line saying so and exits 0. SIGTERM/SIGINT stop it.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port for /metrics (default: %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from prometheus_client import start_http_server

    from monitoring.gpu_exporter import GpuExporter, NvmlUnavailable
    from swarm.errors import ConfigError

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected a TCP port, 1-65535")
    try:
        exporter = GpuExporter()
    except NvmlUnavailable as exc:
        # Not an error: the same unit runs on every host, GPU or not.
        print(f"petalctl gpu-exporter: no NVIDIA GPU to export on this host ({exc})")
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server, thread = start_http_server(args.port, addr=args.host, registry=exporter.registry)
        print(f"petalctl gpu-exporter: serving http://{args.host}:{args.port}/metrics", flush=True)
        stop.wait()
        server.shutdown()
        thread.join(5)
    finally:
        exporter.close()
    return 0
