"""Multiaddrs and PeerIDs are validated once, with messages that say what would be accepted."""

from __future__ import annotations

import pytest

from swarm.addresses import (
    PUBLIC_BOOTSTRAP_PEER_IDS,
    parse_multiaddr,
    parse_private_bootstrap,
    validate_peer_id,
)
from swarm.errors import ConfigError

pytestmark = pytest.mark.unit

RSA_PEER = "QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGhCY"  # a public bootstrap's PeerID
OWN_PEER = "Qmf5QCDc5dkaUBsKXoDXzTpuxjFSwSMcYpAd9TWJhkViN2"
ED_PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


@pytest.mark.parametrize("peer", [RSA_PEER, OWN_PEER, ED_PEER])
def test_valid_peer_ids(peer):
    assert validate_peer_id(peer) == peer


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("Qmfoo", "not a PeerID"),
        ("QmedTaZXmULqwspJXz44SsPZyTNKxhnnFvYRajfH7MGh0Y", "not base58"),  # '0' is not base58
        ("", "not a PeerID"),
        ("hello-world", "not base58"),
    ],
)
def test_invalid_peer_ids(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate_peer_id(text, field="trusted_servers entry")


@pytest.mark.parametrize(
    "text, proto, host, port, peer",
    [
        ("/ip4/127.0.0.1/tcp/31337", "ip4", "127.0.0.1", 31337, None),
        (f"/ip4/10.0.0.5/tcp/0/p2p/{OWN_PEER}", "ip4", "10.0.0.5", 0, OWN_PEER),
        (f"/ip6/::1/tcp/5000/p2p/{OWN_PEER}", "ip6", "::1", 5000, OWN_PEER),
        ("/dns4/boot.uni.example/tcp/31337", "dns4", "boot.uni.example", 31337, None),
    ],
)
def test_parse_multiaddr(text, proto, host, port, peer):
    maddr = parse_multiaddr(text)
    assert (maddr.proto, maddr.host, maddr.port, maddr.peer_id) == (proto, host, port, peer)
    assert str(maddr) == text


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("127.0.0.1:31337", "not a TCP multiaddr"),
        ("/ip4/1.2.3/tcp/1", "not an ip4 address"),
        ("/ip4/::1/tcp/1", "not an ip4 address"),
        ("/ip4/1.2.3.4/tcp/70000", "outside 0-65535"),
        ("/ip4/1.2.3.4/udp/1", "not a TCP multiaddr"),
        ("/ip4/1.2.3.4/tcp/1/p2p/nope", "not a PeerID"),
    ],
)
def test_malformed_multiaddrs(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_multiaddr(text)


def test_bootstrap_needs_peer_id():
    with pytest.raises(ConfigError, match="no /p2p/<PeerID> part"):
        parse_private_bootstrap("/ip4/10.0.0.5/tcp/31337")


@pytest.mark.parametrize(
    "text",
    [
        f"/ip4/10.0.0.5/tcp/31337/p2p/{RSA_PEER}",  # a public PeerID at a private address
        f"/dns/bootstrap1.petals.dev/tcp/31337/p2p/{OWN_PEER}",
        f"/ip4/159.89.214.152/tcp/31337/p2p/{OWN_PEER}",
    ],
)
def test_public_bootstrap_refused(text):
    with pytest.raises(ConfigError, match="PUBLIC Petals swarm"):
        parse_private_bootstrap(text)


def test_public_list_matches_petals_constants():
    """Our copy of the public bootstrap PeerIDs must cover petals' own list."""
    import swarm.compat

    swarm.compat.apply()
    from petals.constants import PUBLIC_INITIAL_PEERS

    for maddr in PUBLIC_INITIAL_PEERS:
        assert maddr.rsplit("/p2p/", 1)[1] in PUBLIC_BOOTSTRAP_PEER_IDS
        with pytest.raises(ConfigError, match="PUBLIC"):
            parse_private_bootstrap(maddr)
