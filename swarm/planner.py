"""Capacity planning: which contiguous block range each GPU's Petals server should serve.

Pure and deterministic (records in, block ranges out), in the spirit of petals'
``server/block_selection.py``. One Petals server per GPU serves one contiguous range, so a plan is
one ``[start, end)`` per GPU. ``plan`` lays the model out from scratch; ``replan`` keeps every
running range that still fits and only fills the gaps.

Errors: ``PlanError`` (a ``ConfigError``, exit 2) when the GPUs cannot hold the requested
replication or the arguments are invalid; the message says what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from swarm.errors import ConfigError
from swarm.modelspecs import (
    QUANTS,
    CacheDtype,
    ModelSpec,
    attention_cache_bytes_per_token_per_block,
    block_bytes,
)

GiB = 1024**3

# --- Budget constants (all in one place) -------------------------------------------------------
# Petals' server default for --attn_cache_tokens: 16384 tokens per block for GQA models (64 MiB
# per 70B block in bf16), 4096 without GQA. Planning with the same number means a server started
# on its planned range gets the cache it would have chosen itself.
DEFAULT_ATTN_CACHE_TOKENS_GQA = 16384
DEFAULT_ATTN_CACHE_TOKENS_MHA = 4096
# Kept free on every device: CUDA context and driver (~0.5 GiB), allocator fragmentation, and the
# gap between a card's nominal size and what torch can use (an "A100 40 GB" shows ~39.4 GiB).
DEVICE_RESERVE_BYTES = 3 * GiB // 2
# Petals sets aside memory for rpc_backward: 2 GiB per 14336 hidden units (~1.14 GiB for 70B).
BACKWARD_RESERVE_BYTES_PER_HIDDEN_UNIT = 2 * GiB / 14336
# CPU-mode (test) servers run float32: bitsandbytes quantization needs CUDA.
CPU_DTYPE: CacheDtype = "fp32"
# With these, a 40 GB A100 holds 22 bf16 70B blocks and 76 nf4 blocks (the runtime guide: ~22/~78).

GpuKey = tuple[str, int]
BlockRange = tuple[int, int]


class PlanError(ConfigError):
    """The GPUs cannot serve the model as asked, or the planning inputs are invalid."""


@dataclass(frozen=True)
class Gpu:
    """One device that will run one Petals server. ``cpu`` marks a CPU-mode test host (RAM)."""

    host: str
    index: int
    memory_bytes: int
    cpu: bool = False

    @property
    def key(self) -> GpuKey:
        return (self.host, self.index)

    @property
    def label(self) -> str:
        return f"{self.host} cpu" if self.cpu else f"{self.host} gpu {self.index}"


@dataclass(frozen=True)
class Assignment:
    gpu: Gpu
    start: int
    end: int
    capacity: int  # blocks that would fit on this device
    bytes_per_block: int  # weights plus attention cache
    reserve_bytes: int

    @property
    def num_blocks(self) -> int:
        return self.end - self.start

    @property
    def memory_planned_bytes(self) -> int:
        """What the server will use: reserve plus its blocks (0 for an idle device)."""
        return self.reserve_bytes + self.num_blocks * self.bytes_per_block if self.num_blocks else 0


@dataclass(frozen=True)
class Plan:
    model: str
    num_layers: int
    quant: str
    replication: int
    attn_cache_tokens: int
    assignments: tuple[Assignment, ...]

    def coverage(self) -> tuple[int, ...]:
        return _coverage(((a.start, a.end) for a in self.assignments), self.num_layers)

    def ranges(self) -> dict[GpuKey, BlockRange]:
        return {a.gpu.key: (a.start, a.end) for a in self.assignments if a.num_blocks}


def reserve_bytes(spec: ModelSpec) -> int:
    return DEVICE_RESERVE_BYTES + round(BACKWARD_RESERVE_BYTES_PER_HIDDEN_UNIT * spec.hidden_size)


def default_attn_cache_tokens(spec: ModelSpec) -> int:
    gqa = spec.num_key_value_heads < spec.num_attention_heads
    return DEFAULT_ATTN_CACHE_TOKENS_GQA if gqa else DEFAULT_ATTN_CACHE_TOKENS_MHA


def bytes_per_block(gpu: Gpu, spec: ModelSpec, quant: str, attn_cache_tokens: int) -> int:
    """Weights plus attention cache of one block on this device."""
    if gpu.cpu:
        weights = block_bytes(spec, "bf16", weight_dtype=CPU_DTYPE)
        cache = attention_cache_bytes_per_token_per_block(spec, CPU_DTYPE)
    else:
        weights = block_bytes(spec, quant)
        cache = attention_cache_bytes_per_token_per_block(spec, "bf16")
    return weights + cache * attn_cache_tokens


def block_capacity(gpu: Gpu, spec: ModelSpec, quant: str, attn_cache_tokens: int) -> int:
    """How many blocks one server on this device can hold (at most the model's block count)."""
    free = gpu.memory_bytes - reserve_bytes(spec)
    return min(
        spec.num_layers, max(0, free // bytes_per_block(gpu, spec, quant, attn_cache_tokens))
    )


@dataclass(frozen=True)
class _Inputs:
    """Validated planning inputs plus each device's capacity, indexed by position in ``gpus``."""

    gpus: tuple[Gpu, ...]
    spec: ModelSpec
    quant: str
    replication: int
    attn_cache_tokens: int
    per_block: tuple[int, ...]
    caps: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    def finish(self, ranges: Mapping[int, BlockRange]) -> Plan:
        reserve = reserve_bytes(self.spec)
        assignments = []
        for i, gpu in enumerate(self.gpus):
            start, end = ranges.get(i, (0, 0))
            if start == end:
                start = end = 0
            assignments.append(
                Assignment(gpu, start, end, self.caps[i], self.per_block[i], reserve)
            )
        return Plan(
            self.spec.name,
            self.num_layers,
            self.quant,
            self.replication,
            self.attn_cache_tokens,
            tuple(assignments),
        )


def _validate(
    gpus: Sequence[Gpu],
    spec: ModelSpec,
    quant: str,
    replication: int,
    attn_cache_tokens: int | None,
) -> _Inputs:
    if quant not in QUANTS:
        raise PlanError(f"quant={quant!r} is not supported (accepted: {', '.join(QUANTS)})")
    if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
        raise PlanError(f"replication={replication!r} is not allowed (accepted: an integer >= 1)")
    tokens = default_attn_cache_tokens(spec) if attn_cache_tokens is None else attn_cache_tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise PlanError(f"attn_cache_tokens={tokens!r} is not allowed (accepted: an integer >= 1)")
    if not gpus:
        raise PlanError("no GPUs to plan for (give each GPU server its petals_gpu_memory_gib)")
    seen: set[GpuKey] = set()
    for gpu in gpus:
        if gpu.key in seen:
            raise PlanError(f"{gpu.label} is listed twice (each host/GPU index once)")
        seen.add(gpu.key)
        if gpu.memory_bytes <= 0:
            raise PlanError(f"{gpu.label}: memory_bytes={gpu.memory_bytes} must be positive")
    per_block = tuple(bytes_per_block(g, spec, quant, tokens) for g in gpus)
    caps = tuple(block_capacity(g, spec, quant, tokens) for g in gpus)
    return _Inputs(tuple(gpus), spec, quant, replication, tokens, per_block, caps)


def _require_capacity(inputs: _Inputs) -> None:
    layers, copies = inputs.num_layers, inputs.replication
    need, held = layers * copies, sum(inputs.caps)
    if held >= need:
        return
    missing = need - held
    size = max(inputs.per_block)
    raise PlanError(
        f"need {need} block slots for {layers} blocks x{copies} "
        f"{'replica' if copies == 1 else 'replicas'} in {inputs.quant}, "
        f"the GPUs hold {held} (missing {missing} blocks ≈ {_size(missing * size)} of GPU "
        f"memory at {_size(size, 2)} per block with a {inputs.attn_cache_tokens}-token "
        f"attention cache; {_reach_hint(inputs)}); add GPUs or quantize (int8, nf4)"
        + (" or lower the replication" if copies > 1 else "")
    )


def _coverage(ranges: Iterable[BlockRange], num_layers: int | None = None) -> tuple[int, ...]:
    ranges = list(ranges)
    size = num_layers if num_layers is not None else max((e for _, e in ranges), default=0)
    delta = [0] * (size + 1)
    for start, end in ranges:
        delta[start] += 1
        delta[end] -= 1
    return tuple(accumulate(delta[:size]))


# --- Fresh plans: split the devices into `replication` lines, each holding every block once ------
# A range family that covers every block R times can always be split into R single covers (true
# for intervals on a line), so "R groups whose capacities each reach num_layers" is exactly the
# feasibility condition; the two greedy splits below find one in all but contrived cases.


def _split_balanced(caps: Sequence[int], order: list[int], lines: int) -> list[list[int]]:
    """Largest first onto the line with the least capacity so far: lines end up even."""
    groups: list[list[int]] = [[] for _ in range(lines)]
    sums = [0] * lines
    for i in order:
        target = min(range(lines), key=lambda k: (sums[k], k))
        groups[target].append(i)
        sums[target] += caps[i]
    return groups


def _split_filling(caps: Sequence[int], order: list[int], lines: int, need: int) -> list[list[int]]:
    """Fill one line at a time, topping it off with the smallest device that completes it."""
    left = list(order)  # largest capacity first
    groups: list[list[int]] = []
    for _ in range(lines):
        if not left:
            break
        group = [left.pop(0)]
        while sum(caps[i] for i in group) < need and left:
            gap = need - sum(caps[i] for i in group)
            fitting = [i for i in left if caps[i] >= gap]
            pick = fitting[-1] if fitting else left[0]
            left.remove(pick)
            group.append(pick)
        groups.append(group)
    for i in left:  # spread the rest like _split_balanced
        target = min(range(len(groups)), key=lambda k: (sum(caps[j] for j in groups[k]), k))
        groups[target].append(i)
    return groups


def _lay_out_line(
    members: list[int], caps: Sequence[int], num_layers: int
) -> dict[int, BlockRange]:
    """Blocks 0..num_layers-1 over the line's devices in order, in proportion to capacity."""
    total = sum(caps[i] for i in members)
    counts = {i: num_layers * caps[i] // total for i in members}
    by_remainder = sorted(members, key=lambda i: (-(num_layers * caps[i] % total), i))
    for i in by_remainder[: num_layers - sum(counts.values())]:
        counts[i] += 1  # never exceeds caps[i]: a full remainder only exists below the cap
    ranges, start = {}, 0
    for i in members:
        ranges[i] = (start, start + counts[i])
        start += counts[i]
    return ranges


def _find_lines(caps: Sequence[int], lines: int, layers: int) -> list[list[int]] | None:
    order = sorted((i for i, c in enumerate(caps) if c > 0), key=lambda i: (-caps[i], i))
    for groups in (
        _split_balanced(caps, order, lines),
        _split_filling(caps, order, lines, layers),
    ):
        if len(groups) == lines and all(sum(caps[i] for i in g) >= layers for g in groups):
            return [sorted(g) for g in groups]
    return None


def reachable_replication(caps: Sequence[int], layers: int) -> int:
    """The highest replication devices with these block capacities reach (0: not one copy)."""
    for lines in range(sum(caps) // layers, 0, -1):
        if _find_lines(caps, lines, layers) is not None:
            return lines
    return 0


def _reach_hint(inputs: _Inputs) -> str:
    reach = reachable_replication(inputs.caps, inputs.num_layers)
    if reach == 0:
        return "these GPUs cannot hold even one copy"
    return f"these GPUs reach replication {reach}"


def _fresh_ranges(inputs: _Inputs) -> dict[int, BlockRange]:
    caps, layers, copies = inputs.caps, inputs.num_layers, inputs.replication
    groups = _find_lines(caps, copies, layers)
    if groups is None:
        raise PlanError(
            f"the GPUs hold {sum(caps)} block slots, enough for {layers} blocks x{copies} in "
            "total, but one server per GPU serves one contiguous range and the GPUs cannot be "
            f"grouped into {copies} sets that each hold all {layers} blocks; "
            f"{_reach_hint(inputs)}. Lower the replication, shrink the attention cache or add GPUs"
        )
    ranges: dict[int, BlockRange] = {}
    for group in groups:
        ranges.update(_lay_out_line(group, caps, layers))
    return ranges


def plan(
    gpus: Sequence[Gpu],
    spec: ModelSpec,
    *,
    quant: str = "bf16",
    replication: int = 1,
    attn_cache_tokens: int | None = None,
) -> Plan:
    """Lay out ``spec``'s blocks so each has ``replication`` servers, load spread evenly."""
    inputs = _validate(gpus, spec, quant, replication, attn_cache_tokens)
    _require_capacity(inputs)
    return inputs.finish(_fresh_ranges(inputs))


# --- Re-planning: keep what runs, fill the gaps ------------------------------------------------


def _best_new_server(
    free: list[int], caps: Sequence[int], holes: list[int], layers: int
) -> tuple[int, BlockRange] | None:
    """The idle device whose best window covers the most short blocks (smaller one on ties)."""
    best: tuple[tuple[int, int, int], int, BlockRange] | None = None
    for i in free:
        width = min(caps[i], layers)
        gain, start = max((holes[a + width] - holes[a], -a) for a in range(layers - width + 1))
        score = (gain, -caps[i], -i)
        if gain > 0 and (best is None or score > best[0]):
            best = (score, i, _trim(holes, -start, -start + width))
    return None if best is None else (best[1], best[2])


def _trim(holes: list[int], start: int, end: int) -> BlockRange:
    """Shrink [start, end) to its first and last uncovered block."""
    while holes[start + 1] == holes[start]:
        start += 1
    while holes[end - 1] == holes[end]:
        end -= 1
    return start, end


def _best_widening(
    ranges: Mapping[int, BlockRange], caps: Sequence[int], holes: list[int], layers: int
) -> tuple[int, BlockRange] | None:
    """A running server that can grow (without dropping blocks) over the most uncovered blocks."""
    best: tuple[tuple[int, int, int], int, BlockRange] | None = None
    for i, (start, end) in sorted(ranges.items()):
        slack = caps[i] - (end - start)
        for left in range(min(slack, start) + 1):
            right = min(slack - left, layers - end)
            gain = holes[start] - holes[start - left] + holes[end + right] - holes[end]
            if gain <= 0:
                continue
            new_start = start - left
            while new_start < start and holes[new_start + 1] == holes[new_start]:
                new_start += 1
            new_end = end + right
            while new_end > end and holes[new_end - 1] == holes[new_end]:
                new_end -= 1
            cost = (start - new_start) + (new_end - end)
            score = (gain, -cost, -i)
            if best is None or score > best[0]:
                best = (score, i, (new_start, new_end))
    return None if best is None else (best[1], best[2])


def _repair(inputs: _Inputs, kept: Mapping[int, BlockRange]) -> dict[int, BlockRange] | None:
    """Cover the blocks ``kept`` leaves short, first with idle devices, then by widening."""
    caps, layers, target = inputs.caps, inputs.num_layers, inputs.replication
    ranges = dict(kept)
    free = [i for i, c in enumerate(caps) if c > 0 and i not in ranges]
    while True:
        short = [int(n < target) for n in _coverage(ranges.values(), layers)]
        if not any(short):
            return ranges
        holes = [0, *accumulate(short)]  # holes[b] = short blocks before b
        move = _best_new_server(free, caps, holes, layers) or _best_widening(
            ranges, caps, holes, layers
        )
        if move is None:
            return None
        i, new_range = move
        ranges[i] = new_range
        if i in free:
            free.remove(i)


def _add_spares(inputs: _Inputs, ranges: dict[int, BlockRange]) -> None:
    """Idle devices take the least-served window (as a joining Petals server would)."""
    layers = inputs.num_layers
    for i, cap in enumerate(inputs.caps):
        if cap == 0 or i in ranges:
            continue
        width = min(cap, layers)
        load = [0, *accumulate(_coverage(ranges.values(), layers))]
        start = min(range(layers - width + 1), key=lambda a: (load[a + width] - load[a], a))
        ranges[i] = (start, start + width)


def _overlap(a: BlockRange | None, b: BlockRange) -> int:
    return 0 if a is None else max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _align(
    inputs: _Inputs, fresh: dict[int, BlockRange], previous: Mapping[GpuKey, BlockRange]
) -> dict[int, BlockRange]:
    """Swap a fresh plan's ranges among equal-capacity devices to keep the most running blocks."""
    aligned: dict[int, BlockRange] = {}
    for cap in sorted(set(inputs.caps[i] for i in fresh)):
        members = [i for i in fresh if inputs.caps[i] == cap]
        pool = [fresh[i] for i in members]
        pairs = sorted(
            ((i, j) for i in members for j in range(len(pool))),
            key=lambda p: (-_overlap(previous.get(inputs.gpus[p[0]].key), pool[p[1]]), p),
        )
        used: set[int] = set()
        for i, j in pairs:
            if i not in aligned and j not in used:
                aligned[i] = pool[j]
                used.add(j)
    return aligned


def replan(
    previous: Plan | Mapping[GpuKey, BlockRange],
    gpus: Sequence[Gpu],
    spec: ModelSpec,
    *,
    quant: str = "bf16",
    replication: int = 1,
    attn_cache_tokens: int | None = None,
) -> Plan:
    """A plan for ``gpus`` that changes as few running servers as it can.

    ``previous`` is a Plan or the ranges that run now (``ranges_from_dict`` of a saved plan).
    Devices whose previous range still fits keep it. Blocks left short are covered by idle
    devices first (new servers, nobody restarts), then by widening running ranges (that server
    restarts, but drops none of its blocks). Devices still idle after that take the least-served
    window. Only if that cannot reach the target is a fresh plan made, with its ranges matched to
    the old ones among devices of equal capacity.
    """
    inputs = _validate(gpus, spec, quant, replication, attn_cache_tokens)
    _require_capacity(inputs)
    old = previous.ranges() if isinstance(previous, Plan) else dict(previous)
    kept = {}
    for i, gpu in enumerate(inputs.gpus):
        start, end = old.get(gpu.key, (0, 0))
        if 0 <= start < end <= inputs.num_layers and end - start <= inputs.caps[i]:
            kept[i] = (start, end)
    ranges = _repair(inputs, kept)
    if ranges is None:
        ranges = _align(inputs, _fresh_ranges(inputs), old)
    else:
        _add_spares(inputs, ranges)
    return inputs.finish(ranges)


def describe_changes(previous: Mapping[GpuKey, BlockRange], new: Plan) -> list[str]:
    """One line per server that must start, restart or stop to go from ``previous`` to ``new``."""
    lines = []
    current = new.ranges()
    labels = {a.gpu.key: a.gpu.label for a in new.assignments}
    for key in sorted(set(previous) | set(current)):
        label = labels.get(key, f"{key[0]} gpu {key[1]}")
        before, after = previous.get(key), current.get(key)
        if before == after:
            continue
        if before is None and after is not None:
            lines.append(f"{label}: start {after[0]}:{after[1]}")
        elif after is None and before is not None:
            lines.append(f"{label}: stop (was {before[0]}:{before[1]})")
        elif before is not None and after is not None:
            lines.append(f"{label}: restart {before[0]}:{before[1]} -> {after[0]}:{after[1]}")
    return lines


# --- Output ------------------------------------------------------------------------------------


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


def _size(n: int, digits: int = 1) -> str:
    return f"{n / GiB:.{digits}f} GiB" if n >= GiB else f"{n / 2**20:.{digits}f} MiB"


def render_plan_table(plan: Plan) -> str:
    """A plain-text table: one row per device, then servers per block."""
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
    }


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


_SERVER_KEYS = ("gpu", "start", "end")
