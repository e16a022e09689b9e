"""Open petals' distributed model for the private swarm only, and close it without leftovers.

Petals' client defaults to the public swarm's bootstrap peers and routes through any server that
announces the blocks. Here the bootstrap peers and the allowed servers are always explicit (from
``SwarmSettings``, which refuses public peers), and on exit the client's own DHT (a process and a
p2pd) is shut down, which petals does not do by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from swarm.errors import SwarmUnavailable
from swarm.swarm_settings import SwarmSettings


def _sequence_managers(model: Any) -> list[Any]:
    from petals.client.remote_sequential import RemoteSequential  # the model exists: compat is on

    return [m.sequence_manager for m in model.modules() if isinstance(m, RemoteSequential)]


@contextmanager
def open_distributed_model(settings: SwarmSettings, **kwargs: Any) -> Iterator[Any]:
    """Yield ``AutoDistributedModelForCausalLM`` bound to the trusted private swarm."""
    initial_peers = settings.require_initial_peers()
    trusted = settings.require_trusted_servers()
    import swarm.compat

    swarm.compat.apply()  # a statement, so import sorting can never move petals above it
    from petals import AutoDistributedModelForCausalLM

    try:
        model = AutoDistributedModelForCausalLM.from_pretrained(
            settings.model,
            initial_peers=initial_peers,
            dht_prefix=settings.effective_dht_prefix,
            allowed_servers=trusted,
            request_timeout=settings.request_timeout,
            **kwargs,
        )
    except Exception as exc:
        if "bootstrap" in str(exc) or "Daemon failed" in str(exc):
            raise SwarmUnavailable(f"cannot join the private swarm: {exc}") from None
        raise
    try:
        yield model
    finally:
        close_distributed_model(model)


def close_distributed_model(model: Any) -> None:
    """Stop petals' update thread, its replicated P2P handle and the client's DHT process.

    The replicated P2P must be closed on the event loop it was created on (hivemind's
    RemoteExpertWorker thread); left to the garbage collector, it logs "no current event loop"
    tracebacks at exit.
    """
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

    for manager in _sequence_managers(model):
        manager.shutdown()
        p2p = getattr(manager.state, "p2p", None)
        if p2p is not None:
            RemoteExpertWorker.run_coroutine(p2p.shutdown())
            manager.state.p2p = None
        if manager.dht.is_alive():
            manager.dht.shutdown()
