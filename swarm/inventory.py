"""Read the kit's Ansible inventory the way Ansible does and pull out what the planner needs.

``load_inventory`` asks Ansible itself (``ansible-inventory -i PATH --list``) when it is
installed, so group_vars/, host_vars/, YAML inventories and host ranges resolve exactly as
site.yml sees them. Without Ansible (or when it fails, e.g. on a vaulted file without its
password) a pure-Python reader takes over: the INI file plus group_vars/ and host_vars/ next to
it (``NAME.yml``, ``NAME.yaml``, ``NAME.json``, ``NAME`` or a ``NAME/`` folder of such files).

The INI reader supports ``[group]`` sections with ``host key=value ...`` lines, ``[group:vars]``
and ``[group:children]`` sections, ``#``/``;`` comments, quoted values, hosts before any section
(group ``ungrouped``); not host ranges (``gpu[01:04]``) or YAML inventories. Variables merge the
way Ansible's do: ``all``, then groups from shallow to deep (alphabetical within a depth), then
the host; group_vars/ and host_vars/ files win over the INI file's values of the same level.
Bad input raises ``ConfigError`` naming host, variable and value.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from swarm.errors import ConfigError
from swarm.modelspecs import QUANTS
from swarm.planner import GiB, Gpu

KIT_GROUPS = ("dht_bootstrap", "gpu_servers", "monitoring", "gateway", "bot", "public_contributors")
GPU_GROUP = "gpu_servers"
MEMORY_EXAMPLE = "40,40,40,40"

# ansible-inventory reads a small inventory in a few seconds; a hung one is a bug to report.
ANSIBLE_INVENTORY_TIMEOUT_S = 120
_VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_SECTION = re.compile(r"^\[(?P<group>[A-Za-z0-9_][A-Za-z0-9_.-]*)(?::(?P<kind>[a-z]+))?\]$")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Inventory:
    source: str
    members: Mapping[str, tuple[str, ...]]  # hosts listed directly under [group]
    children: Mapping[str, tuple[str, ...]]  # [group:children]
    host_vars: Mapping[str, Mapping[str, str]]  # key=value on host lines
    group_vars: Mapping[str, Mapping[str, str]]  # [group:vars]
    resolved_by: str = "python"  # or "ansible-inventory" (variables merged by Ansible)

    def hosts(self, group: str) -> tuple[str, ...]:
        """Hosts of ``group`` and its child groups, in file order; ``all`` is every host."""
        if group == "all":
            return tuple(self.host_vars)
        seen: dict[str, None] = {}
        stack, visited = [group], set()
        while stack:
            name = stack.pop(0)
            if name in visited:
                continue
            visited.add(name)
            seen.update(dict.fromkeys(self.members.get(name, ())))
            stack.extend(self.children.get(name, ()))
        return tuple(seen)

    def _depth(self, group: str, _path: frozenset[str] = frozenset()) -> int:
        parents = [p for p, kids in self.children.items() if group in kids and p not in _path]
        return 1 + max((self._depth(p, _path | {group}) for p in parents), default=0)

    def groups_of(self, host: str) -> tuple[str, ...]:
        groups = {g for g in (*self.members, *self.children) if host in self.hosts(g)}
        return tuple(sorted(groups, key=lambda g: (self._depth(g), g)))

    def vars_for(self, host: str) -> dict[str, str]:
        merged = dict(self.group_vars.get("all", {}))
        for group in self.groups_of(host):
            merged.update(self.group_vars.get(group, {}))
        merged.update(self.host_vars.get(host, {}))
        return merged


def _split(text: str, where: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot parse {text!r} ({exc})") from None


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    members: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    host_vars: dict[str, dict[str, str]] = {}
    group_vars: dict[str, dict[str, str]] = {}
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{source} line {number}"
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            match = _SECTION.match(line)
            if match is None or (match["kind"] or "hosts") not in ("hosts", "vars", "children"):
                raise ConfigError(
                    f"{where}: {line!r} is not a section header "
                    "(accepted: [group], [group:vars], [group:children])"
                )
            group, kind = match["group"], match["kind"] or "hosts"
            if kind == "hosts":
                members.setdefault(group, [])
            continue
        if kind == "vars":
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not _VAR_NAME.match(key):
                raise ConfigError(f"{where}: {line!r} in [{group}:vars] is not key=value")
            group_vars.setdefault(group, {})[key] = " ".join(_split(value, where))
        elif kind == "children":
            (child, *rest) = _split(line, where) or [""]
            if rest or not child:
                raise ConfigError(f"{where}: {line!r} in [{group}:children] is not a group name")
            children.setdefault(group, []).append(child)
        else:
            host, *pairs = _split(line, where)
            if "[" in host:
                raise ConfigError(
                    f"{where}: host range {host!r} is not supported; list hosts one per line"
                )
            values = host_vars.setdefault(host, {})
            for pair in pairs:
                key, sep, value = pair.partition("=")
                if not sep or not _VAR_NAME.match(key):
                    raise ConfigError(f"{where}: host {host}: {pair!r} is not key=value")
                values[key] = value
            members.setdefault(group, [])
            if host not in members[group]:
                members[group].append(host)
    return Inventory(
        source=source,
        members={g: tuple(h) for g, h in members.items()},
        children={g: tuple(c) for g, c in children.items()},
        host_vars=host_vars,
        group_vars=group_vars,
    )


def _text(value: Any) -> str:
    """A YAML/JSON variable as the INI reader would hold it (lists as ``a,b``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value)
    if isinstance(value, dict) and "__ansible_vault" in value:
        return "<vaulted>"
    return str(value)


class _VarsLoader(yaml.SafeLoader):
    """SafeLoader that reads ``!vault`` and ``!unsafe`` values without their secrets."""


_VarsLoader.add_constructor("!vault", lambda loader, node: "<vaulted>")
_VarsLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def _vars_files(folder: Path, name: str) -> list[Path]:
    files = [folder / f"{name}{suffix}" for suffix in _VARS_SUFFIXES]
    found = [f for f in files if f.is_file()]
    if (folder / name).is_dir():
        found += sorted(
            f for f in (folder / name).rglob("*") if f.is_file() and f.suffix in _VARS_SUFFIXES
        )
    return found


def _read_vars(folder: Path, name: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for file in _vars_files(folder, name):
        try:
            data = yaml.load(file.read_text(encoding="utf-8"), Loader=_VarsLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{file}: cannot be read as YAML ({exc})") from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping of variables, got {type(data).__name__}")
        merged.update({str(k): _text(v) for k, v in data.items()})
    return merged


def with_vars_folders(inventory: Inventory, folder: Path) -> Inventory:
    """``inventory`` plus what group_vars/ and host_vars/ in ``folder`` set (files win)."""
    groups = {"all", *inventory.members, *inventory.children}
    group_vars = {g: dict(v) for g, v in inventory.group_vars.items()}
    for group in sorted(groups):
        extra = _read_vars(folder / "group_vars", group)
        if extra:
            group_vars.setdefault(group, {}).update(extra)
    host_vars = {h: dict(v) for h, v in inventory.host_vars.items()}
    for host in host_vars:
        host_vars[host].update(_read_vars(folder / "host_vars", host))
    return Inventory(inventory.source, inventory.members, inventory.children, host_vars, group_vars)


def _ansible_inventory_command() -> str | None:
    beside_python = Path(sys.executable).parent / "ansible-inventory"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("ansible-inventory")


def from_ansible_list(data: Any, source: str) -> Inventory:
    """An ``Inventory`` from ``ansible-inventory --list`` output (variables already merged)."""
    if not isinstance(data, dict) or not isinstance(data.get("_meta"), dict):
        raise ConfigError(f"inventory {source}: ansible-inventory printed no _meta.hostvars")
    hostvars = data["_meta"].get("hostvars") or {}
    members: dict[str, tuple[str, ...]] = {}
    children: dict[str, tuple[str, ...]] = {}
    for group, body in data.items():
        if group == "_meta" or not isinstance(body, dict):
            continue
        members[group] = tuple(str(h) for h in body.get("hosts", ()))
        if body.get("children"):
            children[group] = tuple(str(c) for c in body["children"])
    hosts = [h for group in members.values() for h in group]
    host_vars = {
        host: {str(k): _text(v) for k, v in (hostvars.get(host) or {}).items()}
        for host in dict.fromkeys(hosts)
    }
    return Inventory(source, members, children, host_vars, {}, resolved_by="ansible-inventory")


def _via_ansible(file: Path) -> Inventory | None:
    command = _ansible_inventory_command()
    if command is None:
        return None
    try:
        done = subprocess.run(
            [command, "-i", str(file), "--list"],
            capture_output=True,
            text=True,
            timeout=ANSIBLE_INVENTORY_TIMEOUT_S,
            check=False,
            env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        return from_ansible_list(json.loads(done.stdout), str(file))
    except json.JSONDecodeError:
        return None


def load_inventory(path: str | Path, *, use_ansible: bool = True) -> Inventory:
    """The inventory as Ansible resolves it (see the module docstring for the fallback)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"inventory {str(file)!r} does not exist or is not a file")
    if use_ansible:
        resolved = _via_ansible(file)
        if resolved is not None:
            return resolved
    if file.suffix in (".yml", ".yaml"):
        raise ConfigError(
            f"inventory {str(file)!r}: YAML inventories need Ansible installed "
            "(ansible-inventory); without it use the INI format (see inventory.example.ini)"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"inventory {str(file)!r} cannot be read ({exc})") from None
    return with_vars_folders(parse_inventory(text, source=str(file)), file.parent)


# --- What the planner needs ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings:
    model: str | None
    quant: str
    replication: int
    attn_cache_tokens: int | None  # None: the planner's default (Petals' own)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _gib_list(host: str, name: str, raw: str) -> list[int]:
    entries = raw.strip().removeprefix("[").removesuffix("]").split(",")
    numbers = [_number(e.strip()) for e in entries]
    if not raw.strip() or any(n is None for n in numbers):
        raise ConfigError(
            f"host {host}: {name}={raw!r} is not a list of positive numbers "
            f"(GiB per GPU, example: {MEMORY_EXAMPLE})"
        )
    return [round(n * GiB) for n in numbers if n is not None]


def _flag(host: str, name: str, raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"host {host}: {name}={raw!r} is not a boolean (accepted: true, false)")


def _positive_int(where: str, name: str, raw: str) -> int:
    if not re.fullmatch(r"\d+", raw.strip()) or int(raw) < 1:
        raise ConfigError(f"{where}: {name}={raw!r} is not allowed (accepted: an integer >= 1)")
    return int(raw)


def gpus_from_inventory(inventory: Inventory) -> list[Gpu]:
    """One ``Gpu`` per entry of each [gpu_servers] host's ``petals_gpu_memory_gib``.

    Hosts with ``petals_cpu_mode=true`` (tests) count as one CPU device of
    ``petals_cpu_memory_gib``.
    """
    hosts = inventory.hosts(GPU_GROUP)
    if not hosts:
        raise ConfigError(f"inventory {inventory.source}: group [{GPU_GROUP}] has no hosts")
    gpus = []
    for host in hosts:
        variables = inventory.vars_for(host)
        if _flag(host, "petals_cpu_mode", variables.get("petals_cpu_mode", "false")):
            raw = variables.get("petals_cpu_memory_gib")
            memory = _number(raw) if raw is not None else None
            if memory is None:
                raise ConfigError(
                    f"host {host}: petals_cpu_mode=true needs petals_cpu_memory_gib, a positive "
                    f"number of GiB (got {raw!r}; example: 16)"
                )
            gpus.append(Gpu(host, 0, round(memory * GiB), cpu=True))
            continue
        raw = variables.get("petals_gpu_memory_gib")
        if raw is None:
            raise ConfigError(
                f"host {host}: petals_gpu_memory_gib is not set "
                f"(GiB per GPU, example: {MEMORY_EXAMPLE})"
            )
        memories = _gib_list(host, "petals_gpu_memory_gib", raw)
        gpus.extend(Gpu(host, index, memory) for index, memory in enumerate(memories))
    return gpus


def _model_var(inventory: Inventory, name: str) -> tuple[str, str | None]:
    """(where it was set, value); the value must be the same on every GPU server."""
    values = {host: inventory.vars_for(host).get(name) for host in inventory.hosts(GPU_GROUP)}
    if not values:
        merged = {**inventory.group_vars.get("all", {}), **inventory.group_vars.get(GPU_GROUP, {})}
        return f"[{GPU_GROUP}:vars]", merged.get(name)
    distinct = set(values.values())
    if len(distinct) > 1:
        shown = ", ".join(f"{host}={value!r}" for host, value in values.items())
        raise ConfigError(
            f"{name} differs between GPU servers ({shown}); "
            f"set it once in [all:vars] or [{GPU_GROUP}:vars]"
        )
    return f"host {next(iter(values))}", distinct.pop()


def model_settings(inventory: Inventory) -> ModelSettings:
    """petals_model, petals_quant (bf16), petals_replication (1), petals_attn_cache_tokens."""
    _, model = _model_var(inventory, "petals_model")
    where, quant = _model_var(inventory, "petals_quant")
    quant = quant or "bf16"
    if quant not in QUANTS:
        raise ConfigError(
            f"{where}: petals_quant={quant!r} is not supported (accepted: {', '.join(QUANTS)})"
        )
    where, replication = _model_var(inventory, "petals_replication")
    where_tokens, tokens = _model_var(inventory, "petals_attn_cache_tokens")
    return ModelSettings(
        model=model or None,
        quant=quant,
        replication=_positive_int(where, "petals_replication", replication or "1"),
        attn_cache_tokens=(
            None
            if tokens is None
            else _positive_int(where_tokens, "petals_attn_cache_tokens", tokens)
        ),
    )
