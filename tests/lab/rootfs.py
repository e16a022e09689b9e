"""The lab's Debian base rootfs: built once with mmdebstrap, cached in the clone under .cache/lab/.

Also the filesystem helpers the harness shares: a file lock, mounts below a path, a safe rm -rf.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "lab"

SUITE = "bookworm"
BASE_PACKAGES = (
    "python3", "python3-venv", "python3-apt", "openssh-server", "systemd", "systemd-sysv", "dbus",
    "iproute2", "sudo", "procps", "nftables", "curl", "acl",
    # What the roles install from the distribution, baked in because the hosts reach no package
    # index: the roles' apt tasks then find them present, and the services run for real.
    "prometheus", "prometheus-alertmanager", "prometheus-node-exporter", "caddy",
)  # fmt: skip
# Services the packages above enable at boot; in the lab, as on a host where the roles have not
# run yet, only the roles start them (Prometheus on every host would also cost memory).
PACKAGED_SERVICES = ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter", "caddy")
# Run on the finished rootfs ($1); changing them changes the cache key. apt's timers would wake
# up mid-test, find no network and leave the host degraded.
BASE_HOOKS = (
    "for t in apt-daily apt-daily-upgrade; do"
    ' ln -sf /dev/null "$1/etc/systemd/system/$t.timer"; done',
    f"for s in {' '.join(PACKAGED_SERVICES)}; do"
    ' rm -f "$1/etc/systemd/system/multi-user.target.wants/$s.service"; done;'
    ' rm -f "$1"/etc/systemd/system/timers.target.wants/prometheus-node-exporter-*.timer',
)


class LabError(RuntimeError):
    """The lab could not be built, started or torn down."""


class BaseBuildError(LabError):
    """mmdebstrap failed to build the base rootfs."""


def run(*cmd: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool, output captured; a failure raises LabError naming the command and its stderr."""
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise LabError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return res


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first (the order to unmount them in)."""
    prefix, found = str(path), []
    for line in Path("/proc/mounts").read_text().splitlines():
        # /proc/mounts writes space, tab, newline and backslash as octal escapes.
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])
        if target == prefix or target.startswith(prefix + "/"):
            found.append(target)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts everything below path and never crosses into another filesystem.

    A crashed mmdebstrap can leave the machine's /dev or /proc mounted inside its target.
    """
    for target in mounts_under(path):
        if run("umount", target, check=False).returncode != 0:
            run("umount", "-l", target, check=False)
    if path.exists():
        run("rm", "-rf", "--one-file-system", str(path))


def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The mirror this machine's apt uses for 'SUITE main' (PETALS_LAB_MIRROR overrides it)."""
    if os.environ.get("PETALS_LAB_MIRROR"):
        return os.environ["PETALS_LAB_MIRROR"]
    entries: list[dict[str, list[str]]] = []
    for path in sorted(etc_apt.glob("sources.list.d/*.sources")):  # deb822 paragraphs
        for para in path.read_text().split("\n\n"):
            fields = {}
            for line in para.splitlines():
                key, sep, value = line.partition(":")
                if sep and not line.startswith(("#", " ", "\t")):
                    fields[key.strip().lower()] = value.split()
            if fields.get("enabled", ["yes"]) != ["no"]:
                entries.append(fields)
    for path in [etc_apt / "sources.list", *sorted(etc_apt.glob("sources.list.d/*.list"))]:
        for line in path.read_text().splitlines() if path.is_file() else []:
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()  # drop [options]
            if len(words) >= 4:
                entries.append(
                    {
                        "types": words[:1],
                        "uris": words[1:2],
                        "suites": words[2:3],
                        "components": words[3:],
                    }
                )
    for fields in entries:
        wanted = "deb" in fields.get("types", []) and "main" in fields.get("components", [])
        if wanted and SUITE in fields.get("suites", []) and fields.get("uris"):
            return fields["uris"][0].rstrip("/")
    raise LabError(f"no apt source in {etc_apt} serves '{SUITE} main'; set PETALS_LAB_MIRROR")


def base_key() -> str:
    """Cache key of the base: changes with the suite, the package list or the hooks."""
    recipe = json.dumps({"suite": SUITE, "packages": sorted(BASE_PACKAGES), "hooks": BASE_HOOKS})
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def base_rootfs(cache_dir: Path = CACHE_DIR) -> Path:
    """Path of the cached base rootfs, built with mmdebstrap (~25 s) on first use.

    Built into a temporary sibling and renamed when complete, under a lock, so neither a crash
    nor a concurrent run can leave or use a half-built base.
    """
    final = cache_dir / f"base-{base_key()}"
    if final.is_dir():
        return final
    with locked(cache_dir / "base.lock"):
        if final.is_dir():
            return final
        for stale in cache_dir.glob("base-*.tmp"):
            remove_tree(stale)
        tmp, logfile = final.with_suffix(".tmp"), final.with_suffix(".log")
        cmd = ["mmdebstrap", "--variant=apt", f"--include={','.join(BASE_PACKAGES)}"]
        cmd += [f"--customize-hook={hook}" for hook in BASE_HOOKS]
        cmd += [SUITE, str(tmp), apt_mirror()]
        log.info("building the lab base rootfs: %s", " ".join(cmd))
        started = time.monotonic()
        with logfile.open("w") as out:
            res = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if res.returncode != 0:
            remove_tree(tmp)
            tail = "\n".join(logfile.read_text().splitlines()[-20:])
            raise BaseBuildError(f"mmdebstrap exited {res.returncode} (log: {logfile}):\n{tail}")
        tmp.rename(final)
        log.info("lab base rootfs built in %.1fs: %s", time.monotonic() - started, final)
    return final
