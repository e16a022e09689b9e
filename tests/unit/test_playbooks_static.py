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


# petals_day2 belongs to the day-2 playbooks' owner; its README comes with its next change.
README_ROLES = [role for role in ROLES if role.name != "petals_day2"]


@pytest.mark.parametrize("role", README_ROLES, ids=lambda p: p.name)
def test_every_role_has_a_readme_listing_its_variables(role: Path) -> None:
    readme = (role / "README.md").read_text()
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    missing = [name for name in defaults if f"`{name}`" not in readme]
    assert missing == [], f"{role.name}/README.md does not list {missing}"


def test_site_yml_puts_the_firewall_before_every_listening_service() -> None:
    plays = yaml.safe_load((PLAYBOOKS / "site.yml").read_text())
    roles = [r["role"] for play in plays for r in play.get("roles", [])]
    first_listener = min(
        roles.index(r)
        for r in ("petals_dht_bootstrap", "petals_server", "petals_health", "petals_gateway")
    )
    assert roles.index("petals_firewall") < first_listener
    assert roles.count("petals_firewall") == 1


def test_grafana_is_restarted_only_when_the_role_manages_it() -> None:
    handlers = yaml.safe_load((PLAYBOOKS / "roles/petals_monitoring/handlers/main.yml").read_text())
    grafana = next(h for h in handlers if "grafana" in h["ansible.builtin.systemd_service"]["name"])
    assert "petals_monitoring_grafana != 'none'" in grafana["when"]
