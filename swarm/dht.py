"""Read the private swarm's DHT: which server announces which blocks, in which state.

I/O lives here (a hivemind DHT client); everything derived from the records (coverage, tables) is
in ``swarm.coverage`` as pure functions. A client-mode DHT is a child process plus a p2pd; the
context manager always shuts both down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from swarm.coverage import ServerAnnouncement, merge_announcements
from swarm.errors import SwarmUnavailable

if TYPE_CHECKING:
    from hivemind import DHT

UID_DELIMITER = "."  # petals.data_structures.UID_DELIMITER

# Longest one DHT read may take. A read is a few RPCs of at most hivemind's 3 s wait each, done in
# well under a second on a healthy swarm; a read still running after this is stuck (the DHT's
# process or p2pd wedged), and the caller must see a failure rather than wait forever.
READ_TIMEOUT_S = 60.0


def block_uids(dht_prefix: str, blocks: Sequence[int]) -> list[str]:
    return [f"{dht_prefix}{UID_DELIMITER}{index}" for index in blocks]


@contextmanager
def open_dht(
    initial_peers: Sequence[str],
    *,
    startup_timeout: float = 30.0,
    retry_for: float = 0.0,
    check: Callable[[], str | None] | None = None,
) -> Iterator[DHT]:
    """A client-mode DHT joined to the private swarm's bootstrap peers; shut down on exit.

    ``retry_for`` keeps trying to join for that many seconds (a bootstrap peer that is still
    starting, e.g. all units started at boot); ``check`` may give up early with a reason.
    """
    if not initial_peers:
        # Defence in depth: hivemind would start a lonely DHT; petals would pick public peers.
        raise SwarmUnavailable("no bootstrap peers given; refusing to start a DHT client")
    from hivemind import DHT

    import swarm.compat  # noqa: F401

    deadline = time.monotonic() + retry_for
    while True:
        try:
            dht = DHT(
                initial_peers=list(initial_peers),
                client_mode=True,
                start=True,
                startup_timeout=startup_timeout,
                num_workers=8,
                nat_port_map=False,  # p2pd must not ask the router to open a port (UPnP)
            )
            break
        except Exception as exc:  # hivemind raises bare Exceptions on bootstrap failure
            if check is not None and (reason := check()):
                raise SwarmUnavailable(reason) from None
            if time.monotonic() >= deadline:
                raise SwarmUnavailable(
                    f"cannot join the swarm through {', '.join(initial_peers)}: "
                    f"{exc or type(exc).__name__}"
                ) from None
            time.sleep(1.0)
    try:
        yield dht
    finally:
        dht.shutdown()


def _info_to_dict(info: Any) -> dict[str, Any]:
    return {
        "state": info.state.name.lower(),
        "throughput": info.throughput,
        "start_block": info.start_block,
        "end_block": info.end_block,
        "public_name": info.public_name,
        "version": info.version,
        "network_rps": info.network_rps,
        "forward_rps": info.forward_rps,
        "inference_rps": info.inference_rps,
        "torch_dtype": info.torch_dtype,
        "quant_type": info.quant_type,
        "using_relay": info.using_relay,
        "cache_tokens_left": info.cache_tokens_left,
    }


def _result(future: Any, timeout: float, what: str) -> Any:
    """The DHT process's answer, or ``SwarmUnavailable`` once ``timeout`` has passed."""
    import concurrent.futures

    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise SwarmUnavailable(f"the DHT gave no answer to {what} within {timeout:.0f} s") from None


def read_announcements(
    dht: DHT, dht_prefix: str, num_blocks: int, *, timeout: float = READ_TIMEOUT_S
) -> list[ServerAnnouncement]:
    """One record per server announcing any of the model's blocks (latest records, any state).

    Raises ``SwarmUnavailable`` when the DHT gives no answer within ``timeout`` seconds."""
    import swarm.compat

    swarm.compat.apply()  # a statement, so import sorting can never move petals above it
    from petals.utils.dht import get_remote_module_infos

    future = get_remote_module_infos(
        dht, block_uids(dht_prefix, range(num_blocks)), latest=True, return_future=True
    )
    infos = _result(future, timeout, "a read of the block announcements")
    per_block: list[dict[str, dict[str, Any]]] = []
    for module_info in infos:
        per_block.append(
            {peer.to_base58(): _info_to_dict(info) for peer, info in module_info.servers.items()}
        )
    return merge_announcements(per_block)


def latest_records(
    dht: DHT, uids: Sequence[str], *, timeout: float = READ_TIMEOUT_S
) -> dict[tuple[str, str], tuple[str, float]]:
    """Each server's latest record per block, as ``{(uid, peer_id): (state, expiration)}``.

    petals' ``get_remote_module_infos`` drops expirations; they tell a record a server stored
    just now from one a dead process stored before (see ``wait_for_blocks``). State and
    expiration come from one read, so they belong to the same record. Raises
    ``SwarmUnavailable`` when the DHT gives no answer within ``timeout`` seconds.
    """
    import swarm.compat

    swarm.compat.apply()
    from petals.data_structures import ServerState

    names = {state.value: state.name.lower() for state in ServerState}
    future = dht.run_coroutine(partial(_latest_records, uids=list(uids)), return_future=True)
    raw = _result(future, timeout, "a read of the latest block records")
    return {key: (names.get(state, "unknown"), expires) for key, (state, expires) in raw.items()}


async def _latest_records(
    dht: DHT, node: Any, uids: list[str]
) -> dict[tuple[str, str], tuple[Any, float]]:
    found = await node.get_many(uids, math.inf)  # math.inf: the latest record, like latest=True
    records: dict[tuple[str, str], tuple[Any, float]] = {}
    for uid in uids:
        entry = found.get(uid)
        if entry is None or not isinstance(entry.value, dict):
            continue
        for peer_id, record in entry.value.items():
            value = record.value  # petals' ServerInfo.to_tuple(): (state, throughput, extra)
            state = value[0] if isinstance(value, (tuple, list)) and value else None
            records[(uid, str(peer_id))] = (state, float(record.expiration_time))
    return records


def wait_for_blocks(
    dht: DHT,
    dht_prefix: str,
    num_blocks: int,
    *,
    blocks: Sequence[int] | None = None,
    peer_ids: Sequence[str] | None = None,
    timeout: float = 120.0,
    poll_s: float = 0.5,
    check: Callable[[], str | None] | None = None,
    on_poll: Callable[[list[ServerAnnouncement]], None] | None = None,
    expiring_after: float | None = None,
) -> list[ServerAnnouncement]:
    """Poll the DHT until every block in ``blocks`` has an ONLINE server (one of ``peer_ids`` if
    given). ``check`` may return a reason to give up early (e.g. the server process died).

    ``expiring_after`` (a DHT time) ignores records that expire earlier. A record lives for
    2 x update_period after it is stored, and a crashed server's ONLINE record outlives it: a
    restarted server with the same identity would look ready at once. A server stores each
    record with ``expiration = now + lifetime``, so ``process start + lifetime`` accepts only
    records stored by the process started then."""
    wanted = set(range(num_blocks) if blocks is None else blocks)
    allowed = set(peer_ids) if peer_ids is not None else None
    deadline = time.monotonic() + timeout
    records: list[ServerAnnouncement] = []
    covered: set[int] = set()
    read_error = ""
    while True:
        # A read that gets no answer is a poll that saw nothing; the deadline still holds.
        read_timeout = min(READ_TIMEOUT_S, max(1.0, deadline - time.monotonic()))
        try:
            records = read_announcements(dht, dht_prefix, num_blocks, timeout=read_timeout)
            if on_poll:
                on_poll(records)
            if expiring_after is None:
                covered = {
                    block
                    for record in records
                    if record.state == "online" and (allowed is None or record.peer_id in allowed)
                    for block in range(record.start_block, record.end_block)
                }
            else:
                uids = dict(
                    zip(block_uids(dht_prefix, sorted(wanted)), sorted(wanted), strict=True)
                )
                latest = latest_records(dht, list(uids), timeout=read_timeout)
                covered = {
                    uids[uid]
                    for (uid, peer_id), (state, expiration) in latest.items()
                    if state == "online"
                    and expiration >= expiring_after
                    and (allowed is None or peer_id in allowed)
                }
            read_error = ""
        except SwarmUnavailable as exc:
            covered, read_error = set(), f" (the last read failed: {exc})"
        missing = sorted(wanted - covered)
        if not missing:
            return records
        if check is not None and (reason := check()):
            raise SwarmUnavailable(reason)
        if time.monotonic() >= deadline:
            raise SwarmUnavailable(
                f"blocks {_ranges(missing)} of {dht_prefix} still not served ONLINE after "
                f"{timeout:.0f}s{read_error}"
            )
        time.sleep(poll_s)


def _ranges(numbers: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:  # type: ignore[operator]
            prev = n
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def wait_for_listener(
    host: str, port: int, *, timeout: float = 60.0, check: Callable[[], str | None] | None = None
) -> None:
    """Poll until a TCP listener accepts on host:port (a starting peer's p2pd)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if check is not None and (reason := check()):
            raise SwarmUnavailable(reason)
        if time.monotonic() >= deadline:
            raise SwarmUnavailable(f"nothing listens on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.1)
