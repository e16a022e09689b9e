"""The playbooks without hosts: ansible-lint (production profile), syntax, and the roles' anatomy.

The rendered units are checked on real hosts (systemd-analyze verify/security) in
tests/lab/test_playbooks_converge.py; here only what needs no host.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
ROLES = sorted(p for p in (PLAYBOOKS / "roles").iterdir() if p.is_dir())
BIN = Path(sys.executable).parent
PLAYBOOK_FILES = ["site.yml", "rolling_restart.yml", "upgrade.yml", "purge.yml"]
UNIT_TEMPLATES = sorted(PLAYBOOKS.glob("roles/*/templates/*.service.j2"))
# The one sandbox block every unit template renders (playbooks/templates/petals-hardening.j2).
HARDENING = PLAYBOOKS / "templates/petals-hardening.j2"
HARDENING_IMPORT = "{% from 'petals-hardening.j2' import hardening %}"
# The tags every role task carries (at least one; site.yml adds the role's name). Checks and the
# facts other roles read carry `always` instead: any phase or role then runs on its own.
PHASES = {"install", "configure", "service"}
ANY_SELECTION = PHASES | {"always"}
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


class _Unset(jinja2.ChainableUndefined):
    """A variable the test does not set renders as {name}: the unit's layout is what is checked."""

    def __str__(self) -> str:
        return "{" + str(self._undefined_name) + "}"


def render_unit(template: Path, cpu_mode: bool, **more: object) -> str:
    """The unit as Ansible's template module lays it out (trim_blocks, the playbooks' templates)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([template.parent, HARDENING.parent]),
        trim_blocks=True,
        undefined=_Unset,
    )
    env.filters["comment"] = lambda text: f"# {text}"
    variables = {
        "ansible_managed": "managed",
        "petals_server_cpu_mode": cpu_mode,
        "petals_server_attn_cache_tokens": 0,
        "petals_server_ready_timeout": 600,
        **more,
    }
    return env.from_string(template.read_text()).render(variables)


def _exec_start(text: str) -> str:
    """ExecStart= with its continuation lines joined, as systemd reads it."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return next(line for line in joined.splitlines() if line.startswith("ExecStart="))


@pytest.mark.parametrize(
    ("peers", "device"), [([], "cuda:0"), (["/ip4/10.1.2.3/tcp/31337/p2p/QmPublic"], "cpu")]
)
def test_public_contributor_joins_the_given_public_peers_or_petals_own(
    peers: list[str], device: str
) -> None:
    template = (
        PLAYBOOKS
        / "roles/petals_public_contributor/templates/petals-public-contributor@.service.j2"
    )
    text = render_unit(
        template, False, petals_public_contributor_initial_peers=peers,
        petals_public_contributor_device=device,
        petals_public_contributor_extra_args=["--num_blocks", "3"],
    )  # fmt: skip
    line = _exec_start(text)
    # No --initial_peers at all means Petals' own public bootstrap peers.
    assert ("--initial_peers" in line) == bool(peers)
    for peer in peers:
        assert f"--initial_peers {peer} " in line
    assert line.endswith(f"--device {device} --num_blocks 3"), line


def unit_keys(text: str) -> set[str]:
    return set(re.findall(r"^([A-Za-z]+)=", text, flags=re.M))


@pytest.mark.parametrize("cpu_mode", [True, False], ids=["cpu", "gpu"])
@pytest.mark.parametrize("template", UNIT_TEMPLATES, ids=lambda p: p.name)
def test_unit_templates_are_managed_and_hardened(template: Path, cpu_mode: bool) -> None:
    text = render_unit(template, cpu_mode)
    assert text.startswith("# managed\n")
    keys = unit_keys(text)
    if "Type=oneshot" in text:
        assert {"NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet"} <= keys
    else:
        assert set(LONG_RUNNING_KEYS) <= keys, set(LONG_RUNNING_KEYS) - keys
        assert re.search(r"^KillMode=(mixed|control-group)$", text, flags=re.M)
    # The block's settings once each (the unit sets none of them again), SystemCallFilter aside.
    settings = re.findall(r"^([A-Za-z]+)=", text, flags=re.M)
    shared = unit_keys(HARDENING.read_text()) - {"SystemCallFilter"}
    assert [k for k in shared if settings.count(k) > 1] == []
    # GPU units keep /dev: PrivateDevices= only where no GPU is used.
    uses_gpu = (
        "gpu" in template.name
        or "public-contributor@" in template.name
        or ("petals-server@" in template.name and not cpu_mode)
    )
    assert ("PrivateDevices" in keys) != uses_gpu


@pytest.mark.parametrize("template", UNIT_TEMPLATES, ids=lambda p: p.name)
def test_every_unit_template_takes_its_sandbox_from_the_shared_block(template: Path) -> None:
    text = template.read_text()
    assert text.splitlines()[1] == HARDENING_IMPORT
    assert len(re.findall(r"\{\{ hardening\(", text)) == 1
    # No directive of the shared block is written in the unit itself.
    shared = unit_keys(HARDENING.read_text())
    assert shared >= {
        "NoNewPrivileges",
        "ProtectSystem",
        "SystemCallFilter",
        "RestrictAddressFamilies",
    }
    assert unit_keys(text) & shared == set()


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


def role_tasks(
    tasks: list[dict], inherited: frozenset[str] = frozenset()
) -> list[tuple[str, set[str]]]:
    """(name, tags) of every task, inside blocks too; a block's tags apply to its tasks."""
    found = []
    for task in tasks or []:
        tags = inherited | set(task.get("tags", []))
        if "block" in task:
            for part in ("block", "rescue", "always"):
                found += role_tasks(task.get(part, []), frozenset(tags))
        else:
            found.append((task["name"], tags))
    return found


TASK_FILES = sorted(PLAYBOOKS.glob("roles/*/tasks/*.yml"))


@pytest.mark.parametrize("tasks_file", TASK_FILES, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_every_role_task_carries_a_phase_tag(tasks_file: Path) -> None:
    tasks = role_tasks(yaml.safe_load(tasks_file.read_text()))
    assert tasks
    untagged = [name for name, tags in tasks if not tags & ANY_SELECTION]
    assert untagged == [], "tag each with install, configure or service (or always)"
    unknown = [(name, tags - ANY_SELECTION) for name, tags in tasks if tags - ANY_SELECTION]
    assert unknown == []


def test_facts_that_other_roles_read_are_set_whatever_is_selected() -> None:
    """A fact another role's defaults read (a PeerID, a multiaddr) must be set under any --tags:
    Ansible validates every role's arguments, templating its defaults, even when --tags skips
    all of its tasks, and an undefined fact then fails the play."""
    defaults = {r.name: (r / "defaults/main.yml").read_text() for r in ROLES}
    problems, shared = [], 0
    for tasks_file in TASK_FILES:
        role = tasks_file.parts[-3]
        for task in yaml.safe_load(tasks_file.read_text()) or []:
            facts = task.get("ansible.builtin.set_fact") or {}
            readers = {
                other for name in facts for other, text in defaults.items()
                if other != role and re.search(rf"\b{name}\b", text)
            }  # fmt: skip
            if readers:
                shared += 1
                if "always" not in task.get("tags", []):
                    problems.append(f"{role}: {task['name']} (read by {sorted(readers)})")
    assert shared >= 2
    assert problems == []


def test_an_include_carries_every_phase_of_the_tasks_it_includes() -> None:
    # Tags on include_tasks/include_role select the include only: an include that lacks a phase
    # would skip that phase's tasks inside it when run with --tags.
    problems, includes = [], 0
    for tasks_file in TASK_FILES:
        for task in yaml.safe_load(tasks_file.read_text()) or []:
            args = task.get("ansible.builtin.include_tasks") or task.get(
                "ansible.builtin.include_role"
            )
            if args is None:
                continue
            if isinstance(args, str):
                files = sorted(tasks_file.parent.glob(re.sub(r"\{\{.*?\}\}", "*", args)))
            elif "tasks_from" in args:
                files = [PLAYBOOKS / "roles" / args["name"] / "tasks" / f"{args['tasks_from']}"]
            else:
                files = [PLAYBOOKS / "roles" / args["name"] / "tasks/main.yml"]
            assert files and all(f.exists() for f in files), (tasks_file, args)
            includes += 1
            inside = set().union(
                *(tags for f in files for _, tags in role_tasks(yaml.safe_load(f.read_text())))
            )
            own = set(task.get("tags", []))
            missing = set() if "always" in own else (inside & ANY_SELECTION) - own
            if missing:
                problems.append(
                    f"{tasks_file.relative_to(PLAYBOOKS)}: {task['name']} lacks {sorted(missing)}"
                )
    assert includes >= 10
    assert problems == []


@pytest.mark.parametrize("playbook", ["site.yml", "purge.yml"])
def test_the_playbooks_tag_each_role_with_its_name(playbook: str) -> None:
    plays = yaml.safe_load((PLAYBOOKS / playbook).read_text())
    entries = [r for play in plays for r in play.get("roles", [])]
    assert entries
    assert [r["role"] for r in entries if r["role"] not in r.get("tags", [])] == []


def test_the_address_fallback_is_defined_once() -> None:
    # group_vars/all.yml's petals_host_address; roles use it, not a copy of its fallback chain.
    fallback = re.compile(r"default\(\s*(hostvars\[[^\]]+\]\.)?ansible_host\s*\)")
    where = [
        str(path.relative_to(PLAYBOOKS))
        for path in sorted(PLAYBOOKS.rglob("*"))
        if path.suffix in (".yml", ".j2") and fallback.search(path.read_text())
    ]
    assert where == ["group_vars/all.yml"]


def _public_contributor_task(name: str, *, in_block: str | None = None) -> dict:
    path = PLAYBOOKS / "roles/petals_public_contributor/tasks/main.yml"
    tasks = yaml.safe_load(path.read_text())
    if in_block is not None:
        tasks = next(t for t in tasks if t.get("name") == in_block)["block"]
    return next(t for t in tasks if t.get("name") == name)


def _ansible_template(expression: str, variables: dict) -> object:
    """Render with Ansible's own templar, as the play does (templated vars resolve lazily)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    trusted = {k: trust_as_template(v) if isinstance(v, str) else v for k, v in variables.items()}
    return Templar(loader=DataLoader(), variables=trusted).template(trust_as_template(expression))


@pytest.mark.parametrize(
    ("start", "stop", "now", "state"),
    [
        ("09:00", "17:00", "10:00:00", "started"),
        ("09:00", "17:00", "08:59:59", "stopped"),
        ("09:00", "17:00", "17:00:00", "stopped"),  # the stop time belongs to the stop timer
        ("22:00", "06:00", "23:30:00", "started"),  # past midnight
        ("22:00", "06:00", "05:59:59", "started"),
        ("22:00", "06:00", "12:00:00", "stopped"),
        ("10:00:30", "10:02:30", "10:00:29", "stopped"),
        ("10:00:30", "10:02:30", "10:00:30", "started"),
    ],
)
def test_a_deploy_inside_the_lending_window_starts_lending_and_outside_stops_it(
    start: str, stop: str, now: str, state: str
) -> None:
    task = _public_contributor_task(
        "Serve now inside the window, not outside it", in_block="Serve inside the window only"
    )
    variables = {
        **task["vars"],
        "petals_public_contributor_window_start": start,
        "petals_public_contributor_window_stop": stop,
        "petals_public_contributor_clock": {"stdout": now + "\n"},
    }
    expression = task["ansible.builtin.systemd_service"]["state"]
    assert _ansible_template(expression, variables) == state


@pytest.mark.parametrize(
    ("start", "stop", "accepted"),
    [
        ("22:00", "06:00", True),
        ("09:00:30", "23:59:59", True),
        ("9:00", "17:00", False),  # systemd would take it; the play compares times as text
        ("22:00", "24:00", False),
        ("Mon 22:00", "06:00", False),
    ],
)
def test_the_lending_window_must_be_times_of_day(start: str, stop: str, accepted: bool) -> None:
    task = _public_contributor_task("Check the window's times")
    variables = {
        "petals_public_contributor_window_start": start,
        "petals_public_contributor_window_stop": stop,
    }
    that = task["ansible.builtin.assert"]["that"]
    assert _ansible_template("{{ " + that + " }}", variables) is accepted
