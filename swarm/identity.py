"""Persistent peer identities: the private key file that fixes a peer's PeerID.

The file format is hivemind's (a libp2p protobuf ``PrivateKey`` holding an RSA key), so the same
file is passed to Petals as ``--identity_path``. A fixed identity gives a fixed PeerID, hence a
fixed bootstrap multiaddr and a stable entry in the trusted list. Key files are created 0600 and
refused when group or others can read them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from swarm.errors import IdentityError


@dataclass(frozen=True)
class Identity:
    path: Path
    peer_id: str


def _peer_id_from_key_bytes(data: bytes, path: Path) -> str:
    from hivemind.p2p import PeerID

    try:
        return PeerID.from_identity(data).to_base58()
    except Exception as exc:  # protobuf/crypto raise many types for garbage input
        raise IdentityError(
            f"identity file {str(path)!r} is not a peer key ({type(exc).__name__}); "
            "create one with `petalctl identity new PATH`"
        ) from None


def create_identity(path: str | os.PathLike[str], *, overwrite: bool = False) -> Identity:
    """Generate a new key at ``path`` (0600, written atomically); refuse to replace one."""
    from hivemind.proto import crypto_pb2
    from hivemind.utils.crypto import RSAPrivateKey

    target = Path(path)
    if target.exists() and not overwrite:
        raise IdentityError(
            f"identity file {str(target)!r} already exists (PeerID "
            f"{load_identity(target).peer_id}); refusing to replace it"
        )
    if not target.parent.is_dir():
        raise IdentityError(f"directory {str(target.parent)!r} for the identity does not exist")
    key = crypto_pb2.PrivateKey(
        key_type=crypto_pb2.KeyType.RSA, data=RSAPrivateKey().to_bytes()
    ).SerializeToString()
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
