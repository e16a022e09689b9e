"""`make wheelhouse`, then an install into a fresh venv with no index at all (air-gapped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.swarm

REPO = Path(__file__).resolve().parents[2]


def offline_env() -> dict[str, str]:
    """No pip configuration, no extra find-links: only the wheelhouse may serve packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_NO_INDEX"] = "1"
    return env


def test_wheelhouse_installs_offline(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    built = subprocess.run(
        ["make", "--no-print-directory", "wheelhouse", f"WHEELHOUSE={wheelhouse}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    names = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    assert {"torch", "hivemind", "petals", "transformers", "petals_swarm_kit"} <= names

    venv = tmp_path / "venv"
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    installed = subprocess.run(
        [
            "bash",
            str(wheelhouse / "install-from-wheelhouse.sh"),
            str(wheelhouse),
            str(venv),
            str(base_python),
        ],
        cwd=tmp_path,
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import swarm.compat, petals, hivemind;print(petals.__version__, hivemind.__version__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.stdout.split() == ["2.2.0.post1", "1.1.12"], probe.stderr[-2000:]
    cli = subprocess.run(
        [str(venv / "bin" / "petalctl"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0 and "demo" in cli.stdout
