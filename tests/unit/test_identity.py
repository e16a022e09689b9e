"""The PeerID of a key file, computed without hivemind, agrees with hivemind's own computation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2

from swarm.errors import IdentityError
from swarm.identity import create_identity, load_identity

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _rsa_key_file(path: Path, bits: int, exponent: int = 65537) -> Path:
    der = rsa.generate_private_key(public_exponent=exponent, key_size=bits).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    message = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=der)
    return _write(path, message.SerializeToString())


def test_created_keys_have_hiveminds_peer_id(tmp_path: Path) -> None:
    for i in range(4):
        identity = create_identity(tmp_path / f"k{i}.id")
        expected = PeerID.from_identity(identity.path.read_bytes()).to_base58()
        assert identity.peer_id == expected
        assert load_identity(identity.path).peer_id == expected


@pytest.mark.parametrize(("bits", "exponent"), [(1024, 65537), (2048, 3), (3072, 65537)])
def test_other_rsa_keys_have_hiveminds_peer_id(tmp_path: Path, bits: int, exponent: int) -> None:
    path = _rsa_key_file(tmp_path / "k.id", bits, exponent)
    assert load_identity(path).peer_id == PeerID.from_identity(path.read_bytes()).to_base58()


def test_created_keys_are_what_hivemind_reads(tmp_path: Path) -> None:
    """The file holds hivemind's own message: an RSA 2048 key with exponent 65537, in the same
    bytes as hivemind's protobuf serialises them."""
    path = create_identity(tmp_path / "k.id").path
    data = path.read_bytes()
    message = crypto_pb2.PrivateKey.FromString(data)
    assert message.key_type == crypto_pb2.KeyType.RSA
    assert message.SerializeToString() == data
    key = serialization.load_der_private_key(message.data, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048 and key.public_key().public_numbers().e == 65537
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_the_peer_id_round_trips_through_hivemind(tmp_path: Path) -> None:
    peer_id = create_identity(tmp_path / "k.id").peer_id
    assert peer_id.startswith("Qm")  # a sha2-256 multihash in base58btc
    assert PeerID.from_base58(peer_id).to_base58() == peer_id


def _ed25519_message() -> bytes:
    raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return b"\x08\x01\x12" + bytes([len(raw)]) + raw


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a key at all\n",
        os.urandom(1200),
        b"\x08\x00",  # the type without the key
        b"\x08\x00\x12\x80\x10" + b"\x30" * 10,  # the key shorter than its length says
        b"\x08\x00\x12\x05hello",  # not DER
        b"\x08\x00\x12\x02\x30\x00\x1a\x00",  # an unknown field
    ],
    ids=["empty", "text", "random", "no-data", "truncated", "not-der", "unknown-field"],
)
def test_garbage_is_refused_with_the_files_name(tmp_path: Path, data: bytes) -> None:
    path = _write(tmp_path / "bad.id", data)
    with pytest.raises(IdentityError, match=r"bad\.id' is not a peer key"):
        load_identity(path)


def test_a_key_of_another_type_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "ed.id", _ed25519_message())
    with pytest.raises(IdentityError, match="is not a peer key"):
        load_identity(path)


def test_identities_import_neither_hivemind_nor_torch(tmp_path: Path) -> None:
    """What makes `petalctl identity new|show` (show runs for every peer in every playbook run)
    fast."""
    path = tmp_path / "k.id"
    probe = (
        "import sys\n"
        "from swarm.identity import create_identity, load_identity\n"
        f"assert create_identity({str(path)!r}).peer_id == load_identity({str(path)!r}).peer_id\n"
        f"print(load_identity({str(path)!r}).peer_id)\n"
        "print(sorted(m for m in ('hivemind', 'torch', 'petals') if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    peer_id, heavy = res.stdout.splitlines()
    assert peer_id == PeerID.from_identity(path.read_bytes()).to_base58()
    assert heavy == "[]"
