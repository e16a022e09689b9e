"""The GPU preflight checks, run by real Ansible (local connection) against a stand-in nvidia-smi.

The stand-in prints exactly what ``nvidia-smi --query-gpu=index,memory.total,compute_cap,
driver_version,name --format=csv,noheader,nounits`` prints on a real host (MiB, comma-space
separated), one host per case, so one playbook run checks every case.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

FAILED_LINE = re.compile(r"^(?:fatal|failed): \[(?P<host>[\w-]+)\].*? => (?P<result>\{.*\})$")
ROLES = Path(__file__).resolve().parents[2] / "playbooks" / "roles"
A100_40 = "{i}, 40960, 8.0, {driver}, NVIDIA A100-SXM4-40GB"
V100_32 = "{i}, 32768, 7.0, {driver}, Tesla V100-SXM2-32GB"
H100_80 = "{i}, 81559, 9.0, {driver}, NVIDIA H100 80GB HBM3"

# host: (petals_gpu_memory_gib, nvidia-smi lines, fragment of the failure or None)
CASES = {
    "good": ("40,40,80", [A100_40, A100_40, H100_80], "580.95.05", None),
    "typo": ("40,80", [A100_40, A100_40], "580.95.05", "entry 1 of petals_gpu_memory_gib says 80"),
    "olddriver": ("40", [A100_40], "550.163.01", "driver 550.163.01 is too old for CUDA 13.0"),
    "volta": ("40,32", [A100_40, V100_32], "580.95.05", "GPU 1 (Tesla V100-SXM2-32GB) has compute"),
    "missing": (
        "40,40",
        [A100_40],
        "580.95.05",
        "lists 1 GPU(s) but petals_gpu_memory_gib names 2",
    ),
}


def _fake_nvidia_smi(folder: Path, lines: list[str], driver: str) -> Path:
    script = folder / "nvidia-smi"
    body = "\n".join(line.format(i=i, driver=driver) for i, line in enumerate(lines))
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--query-gpu=index,memory.total,compute_cap,driver_version,name*) ;;\n'
        '  *) echo "stand-in: unexpected arguments: $*" >&2; exit 2 ;; esac\n'
        f"cat <<'OUT'\n{body}\nOUT\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> dict[str, str]:
    """host -> '' when its checks passed, else the failure message."""
    tmp = tmp_path_factory.mktemp("preflight")
    hosts = []
    for host, (memory, lines, driver, _) in CASES.items():
        folder = tmp / host
        folder.mkdir()
        smi = _fake_nvidia_smi(folder, lines, driver)
        hosts.append(
            f"{host} ansible_connection=local petals_gpu_memory_gib={memory} "
            f"petals_preflight_nvidia_smi={smi}"
        )
    (tmp / "inventory.ini").write_text(
        "[gpu_servers]\n"
        + "\n".join(hosts)
        + f"\n[all:vars]\nansible_python_interpreter={sys.executable}\n"
    )
    (tmp / "play.yml").write_text(
        "- hosts: gpu_servers\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: petals_preflight, tasks_from: gpus.yml}\n"
    )
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_NOCOLOR": "true",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventory.ini", "play.yml"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    failures = {host: "" for host in CASES}
    for line in (
        done.stdout.splitlines()
    ):  # "fatal: [host]: FAILED! => {...}" or "failed: [host] (item=..) => {...}"
        match = FAILED_LINE.match(line)
        if match:
            failures[match["host"]] = json.loads(match["result"]).get("msg", "")
    assert done.returncode in (0, 2), done.stdout + done.stderr  # 2: some hosts failed
    return failures


@pytest.mark.parametrize("host", list(CASES))
def test_gpu_preflight_says_what_to_change(outcome: dict[str, str], host: str) -> None:
    expected = CASES[host][3]
    if expected is None:
        assert outcome[host] == ""
    else:
        assert expected in outcome[host], outcome[host]


def test_the_memory_typo_names_the_value_to_set(outcome: dict[str, str]) -> None:
    assert "nvidia-smi reports 40.0 GiB" in outcome["typo"]
    assert "Set it to 40" in outcome["typo"]
