"""The playbooks without hosts: ansible-lint (production profile), syntax, and the roles' anatomy.

The rendered units are checked on real hosts (systemd-analyze verify/security) in
tests/lab/test_playbooks_converge.py; here only what needs no host.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
ROLES = sorted(p for p in (PLAYBOOKS / "roles").iterdir() if p.is_dir())
BIN = Path(sys.executable).parent
PLAYBOOK_FILES = ["site.yml", "rolling_restart.yml", "upgrade.yml", "purge.yml"]
UNIT_TEMPLATES = sorted(PLAYBOOKS.glob("roles/*/templates/*.service.j2"))
# Every long-running unit: a dedicated user, hardening, restarts, a kill mode that reaps p2pd.
LONG_RUNNING_KEYS = (
    "User", "Restart", "KillMode", "NoNewPrivileges", "ProtectSystem", "ProtectHome",
    "PrivateTmp", "CapabilityBoundingSet", "ReadWritePaths", "SystemCallFilter",
    "RestrictAddressFamilies",
)  # fmt: skip


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_ansible_lint_production_profile_passes() -> None:
    res = run(str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor",
              "playbooks/")  # fmt: skip
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-3000:]


@pytest.mark.parametrize("playbook", PLAYBOOK_FILES)
def test_playbook_syntax(playbook: str) -> None:
    res = run(str(BIN / "ansible-playbook"), "--syntax-check", "-i", "inventory.example.ini",
              f"playbooks/{playbook}")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_document_exactly_the_defaults(role: Path) -> None:
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"].get("options", {})
    assert sorted(options) == sorted(defaults)
    assert all(name.startswith(f"{role.name}_") for name in defaults)
    assert all(opt.get("description") for opt in options.values())


@pytest.mark.parametrize("template", UNIT_TEMPLATES, ids=lambda p: p.name)
def test_unit_templates_are_managed_and_hardened(template: Path) -> None:
    text = template.read_text()
    assert text.startswith("{{ ansible_managed | comment }}")
    keys = set(re.findall(r"^([A-Za-z]+)=", text, flags=re.M))
    if "Type=oneshot" in text:
        assert {"NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet"} <= keys
    else:
        assert set(LONG_RUNNING_KEYS) <= keys, set(LONG_RUNNING_KEYS) - keys
        assert re.search(r"^KillMode=(mixed|control-group)$", text, flags=re.M)


def test_every_unit_and_firewall_file_is_validated_before_it_goes_live() -> None:
    unchecked = []
    for tasks in PLAYBOOKS.glob("roles/*/tasks/*.yml"):
        for task in yaml.safe_load(tasks.read_text()) or []:
            args = task.get("ansible.builtin.template") or {}
            dest = str(args.get("dest", ""))
            live = dest.startswith("/etc/systemd/system/") or dest.endswith(".nft")
            timer = "timer" in str(args.get("src", "")) + str(task.get("loop", ""))
            if live and not timer and "validate" not in args:
                unchecked.append(f"{tasks.relative_to(REPO)}: {task['name']}")
    assert unchecked == []
