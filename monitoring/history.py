"""What the last refreshes saw of each server and each bootstrap peer (health.petals.dev's rows of
coloured squares), kept in memory and bounded.

A ``History`` is immutable: the refresher makes the next one from the previous one and each read,
good or failed, so a reader always gets one consistent copy. Every tracked server and bootstrap
peer holds at most ``points`` marks, oldest first, one per refresh:

- a good read marks each server with its state in that read (``online``, ``joining``,
  ``unreachable``, ``offline``) or ``absent`` when it has no record in the DHT any more, and each
  configured bootstrap peer ``reachable`` or ``unreachable`` (with the ping's round trip);
- a failed read marks every server ``unknown`` (the read says nothing about them) and the bootstrap
  peers with what the read learnt of them: ``unreachable`` when it could not see the swarm at
  all (no bootstrap peer answered), ``unknown`` when it failed for another reason.

A server none of whose marks shows it in the DHT (all ``absent`` or ``unknown``: gone for
``points`` refreshes) is dropped, and at most ``max_servers`` servers are tracked (trusted ones,
then the most recently seen, are kept), so memory stays bounded even when strangers flood the DHT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Literal

from monitoring.snapshot import BootstrapRecord, SwarmSnapshot

ServerMark = Literal["online", "joining", "unreachable", "offline", "absent", "unknown"]
BootstrapMark = Literal["reachable", "unreachable", "unknown"]

DEFAULT_POINTS = 30
MAX_SERVERS = 256
_NOT_SEEN = frozenset({"absent", "unknown"})


@dataclasses.dataclass(frozen=True)
class Mark:
    """One refresh's verdict on one server or bootstrap peer."""

    at: float  # unix time of the read
    state: str  # a ServerMark for a server, a BootstrapMark for a bootstrap peer
    rtt_s: float | None = None  # the ping's round trip, when it answered


@dataclasses.dataclass(frozen=True)
class ServerTrack:
    peer_id: str
    public_name: str | None  # the last name it announced
    trusted: bool
    marks: tuple[Mark, ...]  # oldest first

    @property
    def last_seen_at(self) -> float:
        return max((m.at for m in self.marks if m.state not in _NOT_SEEN), default=-1.0)


@dataclasses.dataclass(frozen=True)
class BootstrapTrack:
    address: str
    peer_id: str
    marks: tuple[Mark, ...]  # oldest first


def _append(marks: tuple[Mark, ...], mark: Mark, points: int) -> tuple[Mark, ...]:
    return (*marks, mark)[-points:]


def _display_order(track: ServerTrack) -> tuple[bool, str, str]:
    return (not track.trusted, (track.public_name or "").lower(), track.peer_id)


@dataclasses.dataclass(frozen=True)
class History:
    """Per server (by PeerID) and per configured bootstrap peer, the last ``points`` marks."""

    points: int = DEFAULT_POINTS
    max_servers: int = MAX_SERVERS
    servers: tuple[ServerTrack, ...] = ()
    bootstraps: tuple[BootstrapTrack, ...] = ()

    def __post_init__(self) -> None:
        if self.points < 1 or self.max_servers < 1:
            raise ValueError(
                f"points={self.points}, max_servers={self.max_servers}: both must be at least 1"
            )

    def after_read(self, snapshot: SwarmSnapshot) -> History:
        """The history once a good read produced ``snapshot``."""
        at = snapshot.taken_at
        records = {s.peer_id: s for s in snapshot.servers}
        tracks = []
        for track in self.servers:
            record = records.pop(track.peer_id, None)
            if record is None:
                tracks.append(self._marked(track, Mark(at, "absent")))
            else:
                tracks.append(
                    ServerTrack(
                        peer_id=track.peer_id,
                        public_name=record.public_name or track.public_name,
                        trusted=record.trusted,
                        marks=_append(
                            track.marks, Mark(at, record.state, record.rtt_s), self.points
                        ),
                    )
                )
        tracks += [
            ServerTrack(s.peer_id, s.public_name, s.trusted, (Mark(at, s.state, s.rtt_s),))
            for s in records.values()
        ]
        return self._with(tracks, self._bootstraps_read(at, snapshot.bootstraps))

    def after_failed_read(
        self, at: float, bootstraps: Sequence[BootstrapRecord] | None = None
    ) -> History:
        """The history once a read failed at ``at``; ``bootstraps``: what it learnt of the
        bootstrap peers (None: nothing)."""
        tracks = [self._marked(track, Mark(at, "unknown")) for track in self.servers]
        if bootstraps is not None:
            return self._with(tracks, self._bootstraps_read(at, bootstraps))
        return self._with(
            tracks,
            [
                dataclasses.replace(b, marks=_append(b.marks, Mark(at, "unknown"), self.points))
                for b in self.bootstraps
            ],
        )

    def _marked(self, track: ServerTrack, mark: Mark) -> ServerTrack:
        return dataclasses.replace(track, marks=_append(track.marks, mark, self.points))

    def _bootstraps_read(
        self, at: float, records: Sequence[BootstrapRecord]
    ) -> list[BootstrapTrack]:
        # The configured peers are the ones the read reports: a peer no longer configured goes.
        previous = {b.address: b.marks for b in self.bootstraps}
        return [
            BootstrapTrack(
                address=r.address,
                peer_id=r.peer_id,
                marks=_append(
                    previous.get(r.address, ()),
                    Mark(at, "reachable" if r.reachable else "unreachable", r.rtt_s),
                    self.points,
                ),
            )
            for r in records
        ]

    def _with(
        self, servers: Iterable[ServerTrack], bootstraps: Iterable[BootstrapTrack]
    ) -> History:
        kept = [t for t in servers if any(m.state not in _NOT_SEEN for m in t.marks)]
        if len(kept) > self.max_servers:
            kept.sort(key=lambda t: (not t.trusted, -t.last_seen_at, t.peer_id))
            kept = kept[: self.max_servers]
        return dataclasses.replace(
            self,
            servers=tuple(sorted(kept, key=_display_order)),
            bootstraps=tuple(bootstraps),
        )
