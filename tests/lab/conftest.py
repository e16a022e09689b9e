"""Fixtures for lab tests: real systemd hosts (tests/lab/labhosts.py) booted per test session.

Mark lab tests with ``pytestmark = pytest.mark.lab``. They need root; without it they fail (a skip
would hide that the playbooks were never converged).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.lab.labhosts import Lab, LabFactory, base_rootfs

REQUIRED_TOOLS = ("systemd-nspawn", "mmdebstrap", "ip", "mount", "ssh", "ssh-keygen")


@pytest.fixture(scope="session")
def lab_requirements() -> None:
    """Fail every lab test with one clear line when the machine cannot run the lab."""
    if os.geteuid() != 0:
        pytest.fail(
            "lab tests need root (namespaces, overlay mounts, systemd-nspawn)", pytrace=False
        )
    missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if not (Path(sys.executable).parent / "ansible-playbook").exists():
        missing.append("ansible-playbook (in this venv)")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/lab-deps.sh .venv", pytrace=False)


@pytest.fixture(scope="session")
def lab_base(lab_requirements: None) -> Path:
    """The cached base rootfs (built by mmdebstrap on first use, ~25 s)."""
    return base_rootfs()


@pytest.fixture(scope="session")
def lab_factory(lab_base: Path) -> Iterator[LabFactory]:
    """Start a booted lab: ``lab_factory(["boot1", "srv1"], outsiders=[...], bind_ro={src: dst})``.

    Every lab started here is torn down at the end of the session (or earlier by lab.close()).
    """
    labs: list[Lab] = []

    def start(hosts: Sequence[str], **options: Any) -> Lab:
        lab = Lab(hosts, base=lab_base, **options)
        labs.append(lab)
        return lab.start()

    yield start
    for lab in labs:
        lab.close()


# The converged swarm for the playbook tests lives in its own module.
from tests.lab.conftest_playbooks import swarm_lab  # noqa: E402,F401
