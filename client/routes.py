"""Routes through the trusted servers for one petals InferenceSession, opened and closed by us.

Petals opens a session's route lazily inside its first ``step`` and, when a connection fails
there, reports no peer (``on_request_failure(None)``), so the kit could not tell which server to
avoid. We open the route ourselves (the same calls as petals' ``_enter_server_sessions``), so a
server that does not answer is named. Closing is ours too: petals' close waits without a timeout
for the server to end the stream, which never happens on a stopped (SIGSTOP) server.

A crashed server is caught without waiting for the step timeout: while a step waits longer than
``DISCONNECT_POLL_S``, the client's p2p daemon is asked every ``DISCONNECT_POLL_S`` whether it is
still connected to the server. A SIGKILLed server's connection is closed by its kernel, so the
daemon drops the peer at once, while the step's stream is often never told (hivemind multiplexes
calls over one daemon connection). A gone peer fails the step with ConnectionError (petals then
blames that peer, as for a timeout); a merely slow server stays connected and keeps its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import types
from typing import Any

from client.failover import RouteFailed

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5  # seconds a step waits before (and between) asking whether its peer is gone


def open_route(session: Any, max_length: int) -> list[Any]:
    """Choose a route over every block and open a server session on each span of it; returns
    the spans. Raises petals' MissingBlocksError when some block has no usable server, and
    RouteFailed naming the server that did not answer."""
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
    from petals.client.inference_session import _ServerInferenceSession
    from petals.data_structures import CHAIN_DELIMITER

    manager = session._sequence_manager
    spans = manager.make_sequence(mode="min_latency", cache_tokens_needed=max_length)
    # Our own copy of the config for this route's spans: petals reads ``request_timeout`` from
    # it at every step, so the session can allow a prefill longer than a one-token step.
    config = copy.copy(manager.config)
    session.kit_route_config = config
    opened: list[Any] = []
    try:
        for span in spans:
            uids = CHAIN_DELIMITER.join(manager.block_uids[span.start : span.end])
            metadata = manager.get_request_metadata("rpc_inference", uids, peer_id=span.peer_id)
            try:
                server_session = RemoteExpertWorker.run_coroutine(
                    _ServerInferenceSession.create(
                        config,
                        manager.state.p2p,
                        span,
                        uids,
                        rpc_info=manager.rpc_info,
                        max_length=max_length,
                        **metadata,
                    )
                )
            except Exception as exc:
                raise RouteFailed(str(span.peer_id), f"{span.start}:{span.end}", exc) from exc
            opened.append(server_session)
            watch_disconnects(server_session, manager.state.p2p)
    except BaseException:
        abandon(opened)
        raise
    for earlier, later in itertools.pairwise(opened):
        earlier.next_session = later  # lets servers push activations to the next one directly
    session._server_sessions = opened
    return spans


def watch_disconnects(server_session: Any, p2p: Any) -> None:
    """Make ``server_session``'s steps fail as soon as the p2p daemon has lost its server (see the
    module docstring). Only a peer seen connected now can later be declared gone."""
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

    peer_id = server_session.span.peer_id
    try:
        connected = RemoteExpertWorker.run_coroutine(_connected(p2p, peer_id))
    except Exception as exc:  # cannot tell: keep petals' plain step (the timeout catches it)
        logger.debug("listing the p2p daemon's peers failed: %r", exc)
        return
    if connected:
        server_session._step = types.MethodType(_watched_step(p2p), server_session)


async def _connected(p2p: Any, peer_id: Any) -> bool:
    return any(info.peer_id == peer_id for info in await p2p.list_peers())


def _watched_step(p2p: Any) -> Any:
    async def step(self: Any, inputs_serialized: Any) -> Any:
        # petals' _ServerInferenceSession._step, with the peer watched while it waits
        from hivemind import anext

        await self._inputs_queue.put(inputs_serialized)
        self.stepped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.request_timeout
        reply = asyncio.ensure_future(anext(self._outputs_stream))
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({reply}, timeout=min(DISCONNECT_POLL_S, left))
                if done:
                    return reply.result()
                if not await _connected(p2p, self.span.peer_id):
                    raise ConnectionError(
                        f"the connection to server {self.span.peer_id} closed during a step"
                    )
        finally:
            if not reply.done():
                reply.cancel()

    return step


def close_route(session: Any, avoid: frozenset[str], timeout: float) -> None:
    """Close a petals InferenceSession: spans on healthy servers get a graceful end (their
    attention cache is freed at once) bounded by ``timeout``; spans on ``avoid`` peers (failed,
    maybe stopped) are only forgotten, since waiting for them could last forever."""
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

    spans = list(getattr(session, "_server_sessions", ()))
    for span in reversed(spans):
        if span._outputs_stream is None:
            continue
        if str(span.span.peer_id) not in avoid:
            try:
                RemoteExpertWorker.run_coroutine(asyncio.wait_for(span._aclose_stream(), timeout))
            except BaseException as exc:  # the server went away meanwhile: nothing to free
                logger.debug("closing the session on %s: %r", span.span.peer_id, exc)
        _forget(span)
    session._server_sessions = []
    session._closed = True


def abandon(server_sessions: list[Any]) -> None:
    for span in server_sessions:
        _forget(span)


def _forget(span: Any) -> None:
    # Petals' __del__ would try to close again on hivemind's loop (gone at interpreter exit).
    span._outputs_stream = span._inputs_queue = None
    span.closed = True


def record_expirations(dht: Any, block_uids: list[str], peers: frozenset[str]) -> dict[str, float]:
    """Per peer in ``peers``: the latest expiration of its announcements among ``block_uids``.
    A server re-announces every update_period, so a larger value means it is alive again."""
    latest: dict[str, float] = {}
    if not peers:
        return latest
    for uid in block_uids:
        with contextlib.suppress(Exception):
            found = dht.get(uid, latest=True)
            if found is None or not isinstance(found.value, dict):
                continue
            for peer_id, entry in found.value.items():
                if peer_id in peers:
                    latest[peer_id] = max(latest.get(peer_id, 0.0), float(entry.expiration_time))
    return latest


def apply_blocklist(manager: Any, peers: frozenset[str]) -> None:
    """Keep ``peers`` off every new route (petals filters ``blocked_servers`` on each update),
    and refresh the route table now."""
    from hivemind import PeerID

    manager.blocked_servers = {PeerID.from_base58(p) for p in peers} or None
    manager.update(wait=True)  # re-reads the DHT and recomputes the spans without them
