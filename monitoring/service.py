"""The health service attached to a real private swarm: the DHT collector, the refresher, the
metrics, the probe and the FastAPI app, built from the swarm's and the service's settings, and
run in the foreground by ``petalctl health``."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import signal
from types import FrameType

from fastapi import FastAPI

from client.settings import ClientSettings
from monitoring.app import Worker, create_app
from monitoring.collector import DhtCollector
from monitoring.metrics import HealthMetrics
from monitoring.probe import Probe
from monitoring.refresher import Refresher
from monitoring.settings import HealthSettings
from swarm.errors import EXIT_OK, ConfigError
from swarm.swarm_settings import SwarmSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HealthService:
    """Everything one service instance owns; the app's lifespan starts and stops the rest."""

    app: FastAPI
    collector: DhtCollector
    refresher: Refresher
    metrics: HealthMetrics
    probe: Probe | None

    def close(self) -> None:
        """Stop everything (idempotent): for when the app's lifespan never ran its shutdown."""
        self.refresher.stop()
        if self.probe is not None:
            self.probe.stop()
        self.collector.close()


def _import_before_threads() -> None:
    """Import, on this one thread, everything the collector's and the probe's DHT processes need.

    hivemind starts each DHT as a fork()ed child that unpickles the petals functions it is asked
    to run. A fork taken while another thread is halfway through importing petals or transformers
    leaves the child waiting forever on that import's lock (seen: the probe's first generation
    importing transformers while the collector started its DHT; every DHT read then hung). With
    these modules complete before any thread starts, a child never has to import them.
    """
    from swarm import compat  # noqa: F401  (petals 2.2 imports on hivemind 1.1.12 only with it)

    importlib.import_module("petals")
    for name in (
        "petals.utils.dht",
        "petals.utils.ping",
        "client.petals_model",
        "client.generation",
        "transformers.generation.streamers",
    ):
        importlib.import_module(name)


def build_service(
    swarm: SwarmSettings, health: HealthSettings, client: ClientSettings | None = None
) -> HealthService:
    """Wire a service for ``swarm``; nothing starts until the app's lifespan does.

    ``client``: the probe's client settings (default: ``[client]`` of the default config file).

    Raises ConfigError without bootstrap peers, or without trusted servers while the probe is
    on (it must never route through strangers).
    """
    from swarm.launch import model_num_blocks

    _import_before_threads()
    # The tokenizers library warns at every fork (each DHT start) once it has used threads; the
    # probe's prompts are a few bytes, threads buy nothing.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    swarm.require_initial_peers()
    if health.probe:
        swarm.require_trusted_servers()
    num_blocks = health.num_blocks or model_num_blocks(swarm.model)
    collector = DhtCollector(
        swarm,
        num_blocks=num_blocks,
        replication_target=health.replication_target,
        reachability_timeout_s=health.reachability_timeout_s,
    )
    refresher = Refresher(
        collector, health.refresh_interval_s, history_points=health.history_points
    )
    metrics = HealthMetrics(swarm.model, refresher.status)
    probe = (
        Probe(
            swarm,
            metrics,
            interval_s=health.probe_interval_s,
            tokens=health.probe_tokens,
            timeout_s=health.probe_timeout_s,
            prompt=health.probe_prompt,
            options=client,
        )
        if health.probe
        else None
    )
    workers: list[Worker] = [collector]
    if probe is not None:
        workers.append(probe)
    app = create_app(health, refresher, metrics, workers=workers)
    return HealthService(app, collector, refresher, metrics, probe)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_service(
    swarm: SwarmSettings, health: HealthSettings, client: ClientSettings | None = None
) -> int:
    """Serve in the foreground until SIGTERM/SIGINT; then stop the probe, the refresher and the
    DHT clients (with their p2pd) before returning 0."""
    import uvicorn

    service = build_service(swarm, health, client)
    config = uvicorn.Config(
        service.app,
        host=health.host,
        port=health.port,
        log_level="info",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn catches SIGINT/SIGTERM while it serves, shuts the app down (our lifespan stops every
    # worker) and then raises the signal again for the previous handler: make that handler end
    # the run cleanly, also when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:
        if exc.code not in (None, 0):
            # uvicorn exits 1 when it cannot bind, after logging why.
            raise ConfigError(
                f"cannot serve on {health.host}:{health.port} (see the log line above); "
                "choose another --port or --host"
            ) from None
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        service.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    log.info("health service stopped")
    return EXIT_OK
