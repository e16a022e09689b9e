"""Routes through the trusted servers for one petals InferenceSession, opened and closed by us.

Petals opens a session's route lazily inside its first ``step`` and, when a connection fails
there, reports no peer (``on_request_failure(None)``), so the kit could not tell which server to
avoid. We open the route ourselves (the same calls as petals' ``_enter_server_sessions``), so a
server that does not answer is named. Closing is ours too: petals' close waits without a timeout
for the server to end the stream, which never happens on a stopped (SIGSTOP) server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
from typing import Any

from client.failover import RouteFailed

logger = logging.getLogger(__name__)


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
    except BaseException:
        abandon(opened)
        raise
    for earlier, later in itertools.pairwise(opened):
        earlier.next_session = later  # lets servers push activations to the next one directly
    session._server_sessions = opened
    return spans


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
