"""Typed, validated peer addresses: libp2p multiaddrs and PeerIDs, checked once at the edge.

Pure Python on purpose (no hivemind import), so configuration errors are reported before the
heavy runtime loads. A PeerID is base58btc of a multihash: ``Qm...`` (sha2-256 of an RSA key, what
hivemind identities produce) or ``12D3KooW...`` (identity multihash of an Ed25519 key).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from swarm.errors import ConfigError

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {ch: i for i, ch in enumerate(_B58_ALPHABET)}

# Petals' public swarm (petals.constants.PUBLIC_INITIAL_PEERS). Kept here so the check needs no
# petals import; tests/unit/test_addresses.py compares it with petals' own list.
PUBLIC_BOOTSTRAP_PEER_IDS = frozenset(
    {
        "QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGhCY",
        "QmQGTqmM7NKjV6ggU1ZCap8zWiyKR89RViDXiqehSiCpY5",
    }
)
PUBLIC_BOOTSTRAP_HOST_SUFFIX = ".petals.dev"
PUBLIC_BOOTSTRAP_IPS = frozenset({"159.89.214.152", "159.203.156.48"})


def _b58decode(text: str) -> bytes:
    number = 0
    for ch in text:
        if ch not in _B58_INDEX:
            raise ValueError(f"character {ch!r} is not base58")
        number = number * 58 + _B58_INDEX[ch]
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    leading_zeros = len(text) - len(text.lstrip("1"))
    return b"\x00" * leading_zeros + body


def validate_peer_id(text: str, *, field: str = "peer id") -> str:
    """Return ``text`` if it is a libp2p PeerID, else raise ConfigError naming the field."""
    text = text.strip()
    try:
        raw = _b58decode(text)
    except ValueError as exc:
        raise ConfigError(
            f"{field} {text!r} is not a PeerID ({exc}); expected Qm... or 12D3KooW..."
        ) from None
    # multihash: <code><length><digest>; 0x12 = sha2-256 (32 bytes), 0x00 = identity (<= 42 bytes)
    valid = len(raw) >= 2 and raw[1] == len(raw) - 2 and raw[0] in (0x12, 0x00)
    if not valid or (raw[0] == 0x12 and raw[1] != 32):
        raise ConfigError(
            f"{field} {text!r} is not a PeerID: expected base58 like Qm... (46 characters) or "
            "12D3KooW... (52 characters); `petalctl identity show KEYFILE` prints one"
        )
    return text


_MADDR_RE = re.compile(
    r"^/(?P<proto>ip4|ip6|dns|dns4|dns6)/(?P<host>[^/]+)/tcp/(?P<port>\d+)(?:/p2p/(?P<peer>[^/]+))?$"
)


@dataclass(frozen=True)
class Multiaddr:
    """A TCP multiaddr, optionally ending in /p2p/<PeerID> (bootstrap addresses must have it)."""

    proto: str
    host: str
    port: int
    peer_id: str | None

    def __str__(self) -> str:
        tail = f"/p2p/{self.peer_id}" if self.peer_id else ""
        return f"/{self.proto}/{self.host}/tcp/{self.port}{tail}"

    @property
    def is_public_petals(self) -> bool:
        return (
            (self.peer_id in PUBLIC_BOOTSTRAP_PEER_IDS)
            or self.host.lower().endswith(PUBLIC_BOOTSTRAP_HOST_SUFFIX)
            or self.host in PUBLIC_BOOTSTRAP_IPS
        )


def parse_multiaddr(text: str, *, field: str = "address", need_peer_id: bool = False) -> Multiaddr:
    """Parse ``/ip4/HOST/tcp/PORT[/p2p/PEERID]``; raise ConfigError that shows an example."""
    text = text.strip()
    example = "/ip4/10.0.0.5/tcp/31337/p2p/QmXyz..."
    match = _MADDR_RE.match(text)
    if not match:
        raise ConfigError(f"{field} {text!r} is not a TCP multiaddr; expected e.g. {example}")
    proto, host, port_text, peer = match["proto"], match["host"], match["port"], match["peer"]
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{field} {text!r}: port {port} is outside 0-65535")
    if proto in ("ip4", "ip6"):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{field} {text!r}: {host!r} is not an {proto} address") from None
        if (address.version == 4) != (proto == "ip4"):
            raise ConfigError(f"{field} {text!r}: {host!r} is not an {proto} address")
    if need_peer_id and peer is None:
        raise ConfigError(
            f"{field} {text!r} has no /p2p/<PeerID> part; a bootstrap address needs it, "
            f"e.g. {example} (`petalctl identity show` prints the PeerID)"
        )
    if peer is not None:
        validate_peer_id(peer, field=f"{field} {text!r}:")
    return Multiaddr(proto=proto, host=host, port=port, peer_id=peer)


def parse_private_bootstrap(text: str, *, field: str = "initial_peers") -> Multiaddr:
    """A private swarm's bootstrap multiaddr: well-formed, with a PeerID, not Petals' public."""
    address = parse_multiaddr(text, field=field, need_peer_id=True)
    if address.is_public_petals:
        raise ConfigError(
            f"{field} {text!r} is a bootstrap peer of the PUBLIC Petals swarm; this kit never "
            "sends private work there. Use your own bootstrap peer (`petalctl bootstrap`) or, to "
            "lend a "
            "GPU to the public swarm, the public_contributor role"
        )
    return address
