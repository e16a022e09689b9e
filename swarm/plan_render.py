"""How a plan is shown and stored: the operator's table, and JSON for the playbooks.

``plan_to_dict`` writes what ``ranges_from_dict`` reads back (``petalctl plan --previous``, and
the layout the hosts report, see playbooks/layout.yml). Bad documents raise ``PlanError``.
"""

from __future__ import annotations

from typing import Any

from swarm.planner import BlockRange, GiB, GpuKey, Plan, PlanError, reachable_replication


def coverage_runs(plan: Plan) -> list[tuple[int, int, int]]:
    """(first, last, servers) for runs of consecutive blocks with the same number of servers."""
    runs: list[tuple[int, int, int]] = []
    for block, servers in enumerate(plan.coverage()):
        if runs and runs[-1][2] == servers:
            runs[-1] = (runs[-1][0], block, servers)
        else:
            runs.append((block, block, servers))
    return runs


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _failure_domain_line(plan: Plan) -> str:
    hosts = {a.gpu.host for a in plan.assignments if a.num_blocks}
    left = plan.servers_left_after_losing_a_host()
    shared = plan.host_conflicts()
    where = (
        "every block's replicas are on distinct hosts"
        if shared == 0
        else f"{shared} block replicas share a host with another replica of the same block"
    )
    if len(hosts) < 2:
        return f"Hosts: one host runs every server; {where}"
    return (
        f"Hosts: {where}; losing any one host leaves every block at least {left} "
        f"server{'' if left == 1 else 's'}"
    )


def render_plan_table(plan: Plan) -> str:
    """A plain-text table: one row per device, then servers per block and per host."""
    rows = [("HOST", "GPU", "MEMORY", "BLOCKS", "COUNT", "PLANNED")]
    notes = []
    for a in plan.assignments:
        blocks = f"{a.start}:{a.end}" if a.num_blocks else "-"
        planned = _gib(a.memory_planned_bytes) if a.num_blocks else "-"
        gpu = "cpu" if a.gpu.cpu else str(a.gpu.index)
        rows.append((a.gpu.host, gpu, _gib(a.gpu.memory_bytes), blocks, str(a.num_blocks), planned))
        if a.capacity == 0:
            need = _gib(a.reserve_bytes + a.bytes_per_block)
            notes.append(f"{a.gpu.label}: too small for one block (needs at least {need}), idle")
        elif not a.num_blocks:
            notes.append(f"{a.gpu.label}: not needed for this plan, idle")
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    right = {1, 4}
    table = [
        "  ".join(
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    slots = sum(a.capacity for a in plan.assignments)
    header = [
        f"Model {plan.model}: {plan.num_layers} blocks, {plan.quant}, replication target "
        f"{plan.replication}, attention cache {plan.attn_cache_tokens} tokens per block",
        "",
    ]
    summary = ["", "Servers per block:"]
    for first, last, servers in coverage_runs(plan):
        span = f"block {first}" if first == last else f"blocks {first}-{last}"
        summary.append(f"  {span}: {servers} server{'' if servers == 1 else 's'}")
    used = sum(a.num_blocks for a in plan.assignments)
    reach = reachable_replication([a.capacity for a in plan.assignments], plan.num_layers)
    summary.append(
        f"Block slots: {used} used of {slots} that fit (these GPUs reach replication {reach})"
    )
    summary.append(_failure_domain_line(plan))
    return "\n".join(header + table + summary + [f"Note: {n}" for n in notes]) + "\n"


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """JSON-ready plan; ``hosts`` maps each host to the servers it runs, for the playbooks."""
    hosts: dict[str, list[dict[str, Any]]] = {}
    idle = []
    for a in plan.assignments:
        if a.num_blocks:
            hosts.setdefault(a.gpu.host, []).append(
                {"gpu": a.gpu.index, "cpu": a.gpu.cpu, "start": a.start, "end": a.end}
            )
        else:
            reason = "too small for one block" if a.capacity == 0 else "not needed"
            idle.append({"host": a.gpu.host, "gpu": a.gpu.index, "reason": reason})
    return {
        "model": plan.model,
        "quant": plan.quant,
        "replication": plan.replication,
        "num_blocks": plan.num_layers,
        "attn_cache_tokens": plan.attn_cache_tokens,
        "hosts": hosts,
        "idle": idle,
        "coverage": [
            {"start": first, "end": last + 1, "servers": servers}
            for first, last, servers in coverage_runs(plan)
        ],
        "host_conflicts": plan.host_conflicts(),
        "servers_left_after_losing_a_host": plan.servers_left_after_losing_a_host(),
    }


_SERVER_KEYS = ("gpu", "start", "end")


def ranges_from_dict(data: Any) -> dict[GpuKey, BlockRange]:
    """The running ranges recorded in a ``plan_to_dict`` document (for ``replan``)."""
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not isinstance(hosts, dict):
        raise PlanError("previous plan: expected a JSON object with a 'hosts' object")
    ranges: dict[GpuKey, BlockRange] = {}
    for host, servers in hosts.items():
        for server in servers if isinstance(servers, list) else [servers]:
            values = [server.get(k) if isinstance(server, dict) else None for k in _SERVER_KEYS]
            numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
            if len(numbers) != len(_SERVER_KEYS):
                raise PlanError(
                    f"previous plan: host {host!r} has server entry {server!r} "
                    "(expected {'gpu': int, 'start': int, 'end': int})"
                )
            gpu, start, end = numbers
            ranges[(str(host), gpu)] = (start, end)
    return ranges
