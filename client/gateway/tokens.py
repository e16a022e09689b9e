"""Bearer tokens, stored hashed: a tokens file (mode 0600) of ``NAME:sha256:HEX`` lines.

Tokens are 256-bit random strings made here, so a fast hash is enough: nobody can guess a
preimage of a random 256-bit value, and a slow password hash (scrypt) would only add latency to
every request. The file holds no token itself, only its hash; the token is shown once, when made.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from swarm.errors import ConfigError

logger = logging.getLogger(__name__)
TOKEN_PREFIX = "pk-"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_entry(line: str, where: str) -> tuple[str, str]:
    name, sep, digest = line.partition(":")
    if not sep or not _NAME.match(name) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ConfigError(f"{where}: expected NAME:sha256:<64 hex digits>, got {line[:40]!r}")
    return name, digest


def read_tokens_file(path: Path) -> dict[str, str]:
    """name -> hash. Refuses a file others can read or write (chmod 600 it)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"tokens_file {str(path)!r} does not exist: create it with "
            "`petalctl gateway token add NAME`"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"tokens_file {str(path)!r} is accessible to other users (mode "
            f"{stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    entries: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, digest = parse_entry(line, f"{path}:{number}")
        if name in entries:
            raise ConfigError(f"{path}:{number}: token name {name!r} appears twice")
        entries[name] = digest
    return entries


def _write_atomic(path: Path, entries: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# petals gateway bearer tokens (NAME:sha256:HEX); managed by petalctl gateway token\n"
    text += "".join(f"{name}:{digest}\n" for name, digest in entries.items())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokens-")  # created with mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_token(path: Path, name: str) -> str:
    """Make a token for ``name``, store its hash, and return the token (shown only now)."""
    if not _NAME.match(name):
        raise ConfigError(f"token name {name!r}: use 1-64 letters, digits, '.', '_', '-' or '@'")
    entries = read_tokens_file(path) if path.exists() else {}
    if name in entries:
        raise ConfigError(f"a token named {name!r} exists; remove it first to replace it")
    token = new_token()
    entries[name] = hash_token(token)
    _write_atomic(path, entries)
    return token


def remove_token(path: Path, name: str) -> None:
    entries = read_tokens_file(path)
    if name not in entries:
        raise ConfigError(f"no token named {name!r} in {path}")
    del entries[name]
    _write_atomic(path, entries)


class TokenStore:
    """Checks presented tokens against stored hashes (constant-time comparison).

    With a tokens file, each check first looks at the file's inode, size and mtime (one stat)
    and reloads it when it changed: `petalctl gateway token add/remove` takes effect at once,
    without a restart. A file that became unreadable or invalid keeps the last good set (and
    logs why): a typo must not lock everyone out, nor let everyone in.
    """

    def __init__(
        self,
        entries: dict[str, str],
        path: Path | None = None,
        fixed: dict[str, str] | None = None,
    ) -> None:
        self._entries = dict(entries)
        self._path, self._fixed = path, dict(fixed or {})
        self._seen = self._signature()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, tokens_file: Path | None, hashed: Iterable[str]) -> TokenStore:
        fixed = dict(parse_entry(line, "token_hashes") for line in hashed)
        entries = read_tokens_file(tokens_file) if tokens_file is not None else {}
        return cls({**entries, **fixed}, tokens_file, fixed)

    def _signature(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refresh(self) -> None:
        """Reload the tokens file if it changed since it was read."""
        if self._path is None:
            return
        signature = self._signature()
        if signature == self._seen:
            return
        with self._lock:
            if signature == self._seen:
                return
            try:
                entries = read_tokens_file(self._path)
            except (ConfigError, OSError) as exc:
                logger.warning("tokens file not reloaded, keeping the last good one: %s", exc)
            else:
                self._entries = {**entries, **self._fixed}
                logger.info("tokens file reloaded: %d tokens", len(self._entries))
            self._seen = signature

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def has(self, name: str) -> bool:
        self.refresh()
        return name in self._entries

    def verify(self, token: str) -> str | None:
        """The token's name, or None."""
        self.refresh()
        digest = hash_token(token)
        found = None
        for name, stored in self._entries.items():
            if hmac.compare_digest(stored, digest):
                found = name
        return found
