"""Persistent peer identities: the private key file that fixes a peer's PeerID.

The file format is hivemind's (a libp2p protobuf ``PrivateKey`` holding an RSA key), so the same
file is passed to Petals as ``--identity_path``. A fixed identity gives a fixed PeerID, hence a
fixed bootstrap multiaddr and a stable entry in the trusted list. Key files are created 0600 and
refused when group or others can read them.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import IdentityError


@dataclass(frozen=True)
class Identity:
    path: Path
    peer_id: str


_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_RSA = 0  # libp2p's KeyType enum


def _b58encode(data: bytes) -> str:
    """Bitcoin's base58 (what libp2p calls base58btc); leading zero bytes become "1"s."""
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 58)
        digits.append(_B58_ALPHABET[rest])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key_message(key_type: int, data: bytes) -> bytes:
    """libp2p's key message, fields in order (the spec asks for a deterministic encoding)."""
    return b"\x08" + _encode_varint(key_type) + b"\x12" + _encode_varint(len(data)) + data


def _parse_key_message(data: bytes) -> tuple[int, bytes]:
    """libp2p's key message: required Type (field 1, varint) and Data (field 2, bytes)."""
    key_type, key_data, pos = None, None, 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        if tag == 0x08:
            key_type, pos = _varint(data, pos)
        elif tag == 0x12:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated key data")
            key_data, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unexpected protobuf tag {tag}")
    if key_type is None or key_data is None:
        raise ValueError("key type or key data missing")
    return key_type, key_data


def _peer_id_from_key_bytes(data: bytes, path: Path) -> str:
    """The PeerID of a libp2p private key file, as libp2p's peer-id spec defines it.

    The public key message (Type RSA, Data the DER SubjectPublicKeyInfo) is hashed with sha2-256
    into a multihash and written in base58btc. Computed here with `cryptography` alone: importing
    hivemind for it pulls in torch and takes seconds, and every playbook run reads each peer's ID.
    tests/unit/test_identity.py checks it against hivemind's PeerID.from_identity.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key_type, der = _parse_key_message(data)
        if key_type != _RSA:
            raise ValueError(f"key type {key_type} is not RSA")
        private = serialization.load_der_private_key(der, password=None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("not an RSA key")
        spki = private.public_key().public_bytes(
            encoding=serialization.Encoding.DER,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    except Exception as exc:  # protobuf framing, DER and crypto errors of garbage input
        raise IdentityError(
            f"identity file {str(path)!r} is not a peer key ({type(exc).__name__}); "
            "create one with `petalctl identity new PATH`"
        ) from None
    public = _key_message(_RSA, spki)
    # A key message over 42 bytes (every RSA key) is hashed: sha2-256 (0x12), 32 bytes long.
    return _b58encode(b"\x12\x20" + hashlib.sha256(public).digest())


def create_identity(path: str | os.PathLike[str], *, overwrite: bool = False) -> Identity:
    """Generate a new key at ``path`` (0600, written atomically); refuse to replace one.

    The key is what hivemind generates (RSA 2048, exponent 65537, PKCS#1 DER) in libp2p's
    PrivateKey message, made with `cryptography` alone for the same reason as above.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    target = Path(path)
    if target.exists() and not overwrite:
        raise IdentityError(
            f"identity file {str(target)!r} already exists (PeerID "
            f"{load_identity(target).peer_id}); refusing to replace it"
        )
    if not target.parent.is_dir():
        raise IdentityError(f"directory {str(target.parent)!r} for the identity does not exist")
    der = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )
    key = _key_message(_RSA, der)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Identity(path=target, peer_id=_peer_id_from_key_bytes(key, target))


def load_identity(path: str | os.PathLike[str]) -> Identity:
    """Read a key file and return its PeerID; a clear IdentityError for every way it can fail."""
    target = Path(path)
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(
            f"identity file {str(target)!r} does not exist; create it with "
            f"`petalctl identity new {target}`"
        ) from None
    except OSError as exc:
        raise IdentityError(f"identity file {str(target)!r}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise IdentityError(f"identity file {str(target)!r} is not a regular file")
    if mode & 0o077:
        raise IdentityError(
            f"identity file {str(target)!r} is readable by others (mode {mode & 0o777:o}); "
            f"run `chmod 600 {target}`"
        )
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read identity file {str(target)!r}: {exc.strerror}") from None
    return Identity(path=target, peer_id=_peer_id_from_key_bytes(data, target))
