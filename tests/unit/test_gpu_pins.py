"""The pinned GPU wheel set (requirements/gpu.txt with constraints.txt) resolves for a Linux
x86_64 GPU host on CPython 3.11 and 3.12, and every package it brings is pinned.

pip resolves for the target platform with ``--dry-run --report``: it reads only the registry's
index pages and metadata files (PEP 658), never the wheels (torch's CUDA set is several GB), so
this test needs the package registry but downloads almost nothing. pip's own config files are
ignored: a machine with a local CPU torch in its find-links would otherwise resolve to that.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# pip does not widen --platform to older manylinux tags by itself; a glibc 2.28+ host takes all.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
# Installed by `make venv` itself (pip install --upgrade pip setuptools wheel), not pinned.
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonical(name)] = version.strip()
    return found


def resolve(python_version: str) -> list[dict]:
    abi = "cp" + python_version.replace(".", "")
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env["PIP_CONFIG_FILE"] = os.devnull
    argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    argv += ["--report", "-", "--only-binary=:all:", "--python-version", python_version]
    argv += ["--implementation", "cp", "--abi", abi]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    argv += ["-c", "constraints.txt", "-c", "requirements/gpu.txt", "-r", "requirements/gpu.txt"]
    argv += ["bitsandbytes"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"pip could not resolve the GPU set for CPython {python_version} (needs the package "
        f"registry):\n{done.stderr[-3000:]}"
    )
    return json.loads(done.stdout)["install"]


@pytest.mark.parametrize("python_version", ["3.11", "3.12"])
def test_gpu_wheel_set_resolves_pinned_for_linux_cuda(python_version: str):
    installs = resolve(python_version)
    resolved = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    wheels = {canonical(i["metadata"]["name"]): i["download_info"]["url"] for i in installs}
    gpu = pins(REPO / "requirements" / "gpu.txt")
    everything = {**pins(REPO / "constraints.txt"), **gpu}

    assert resolved["torch"] == "2.13.0", "the GPU set must be PyPI's CUDA build, not a local one"
    assert re.search(r"torch-2\.13\.0-cp3\d+-cp3\d+-manylinux", wheels["torch"]), wheels["torch"]
    assert resolved["bitsandbytes"] == everything["bitsandbytes"]
    # gpu.txt is exactly torch's CUDA runtime: nothing missing, nothing stale.
    cuda = {n for n in resolved if n.startswith(("nvidia-", "cuda-")) or n in {"torch", "triton"}}
    assert cuda == set(gpu), f"missing pins: {cuda - set(gpu)}; stale pins: {set(gpu) - cuda}"
    unpinned = {n: v for n, v in resolved.items() if n not in everything and n not in BOOTSTRAP}
    assert not unpinned, f"resolved but not pinned anywhere: {unpinned}"
    drift = {n: (v, everything[n]) for n, v in resolved.items() if everything.get(n, v) != v}
    assert not drift, f"resolved version differs from the pin (resolved, pinned): {drift}"
