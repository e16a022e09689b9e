"""Capacity planning: which contiguous block range each GPU's Petals server should serve.

Pure and deterministic (records in, block ranges out), in the spirit of petals'
``server/block_selection.py``. One Petals server per GPU serves one contiguous range, so a plan is
one ``[start, end)`` per GPU. ``plan`` lays the model out from scratch, each block's replicas on
distinct hosts wherever the hardware allows (the host is the failure domain; the combinatorics
are in ``swarm.plan_cover``); ``replan`` keeps every running range that still fits and only fills
the gaps. Tables and JSON: ``swarm.plan_render``.

Errors: ``PlanError`` (a ``ConfigError``, exit 2) when the GPUs cannot hold the requested
replication or the arguments are invalid; the message says what is missing and how many GPUs of
which size would close the gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from swarm.errors import ConfigError
from swarm.modelspecs import (
    QUANTS,
    CacheDtype,
    ModelSpec,
    attention_cache_bytes_per_token_per_block,
    block_bytes,
    rope_table_bytes_per_block,
)
from swarm.plan_cover import best_layout, conflicts, cover_lines, host_loss, max_lines

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
# Sizes offered when the GPUs fall short ("adding 2 more GPUs of 48 GiB would close it"), next
# to the sizes already in the inventory.
SUGGESTED_GPU_GIB = (24, 48, 80, 141)
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

    def _by_position(self) -> tuple[dict[int, BlockRange], list[str]]:
        ranges = {n: (a.start, a.end) for n, a in enumerate(self.assignments) if a.num_blocks}
        return ranges, [a.gpu.host for a in self.assignments]

    def host_conflicts(self) -> int:
        """Block replicas sharing a host with another replica of the same block (0: none)."""
        return conflicts(*self._by_position(), self.num_layers)

    def servers_left_after_losing_a_host(self) -> int:
        """The fewest servers any block keeps when any one host goes down."""
        return host_loss(*self._by_position(), self.num_layers)


def size_text(n: int, digits: int = 1) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / GiB:.{digits}f} GiB" if n >= GiB else f"{n / 2**20:.{digits}f} MiB"


def reserve_bytes(spec: ModelSpec) -> int:
    return DEVICE_RESERVE_BYTES + round(BACKWARD_RESERVE_BYTES_PER_HIDDEN_UNIT * spec.hidden_size)


def default_attn_cache_tokens(spec: ModelSpec) -> int:
    gqa = spec.num_key_value_heads < spec.num_attention_heads
    return DEFAULT_ATTN_CACHE_TOKENS_GQA if gqa else DEFAULT_ATTN_CACHE_TOKENS_MHA


def server_max_session_tokens(spec: ModelSpec) -> int:
    """The longest inference session a petals 2.2 server admits by default
    (``inference_max_length``: 8192 tokens for GQA models, 2048 otherwise)."""
    gqa = spec.num_key_value_heads < spec.num_attention_heads
    return 8192 if gqa else 2048


def bytes_per_block(
    gpu: Gpu, spec: ModelSpec, quant: str, attn_cache_tokens: int, extra_bytes_per_block: int = 0
) -> int:
    """Weights, attention cache and rotary tables of one block on this device, plus
    ``extra_bytes_per_block`` (a hook for per-block memory none of these show; added as given).

    Rotary tables are fp32 per block: transformers builds max_position_embeddings rows up front
    (4 MiB per Llama-2-70B block), the kit's llama3 rope grows them to the longest session a
    server admits (``server_max_session_tokens``), so Llama-3.1's 131072 positions are not paid.
    """
    rope = rope_table_bytes_per_block(spec, server_max_session_tokens(spec))
    if gpu.cpu:
        weights = block_bytes(spec, "bf16", weight_dtype=CPU_DTYPE)
        cache = attention_cache_bytes_per_token_per_block(spec, CPU_DTYPE)
    else:
        weights = block_bytes(spec, quant)
        cache = attention_cache_bytes_per_token_per_block(spec, "bf16")
    return weights + cache * attn_cache_tokens + rope + extra_bytes_per_block


def block_capacity(
    gpu: Gpu, spec: ModelSpec, quant: str, attn_cache_tokens: int, extra_bytes_per_block: int = 0
) -> int:
    """How many blocks one server on this device can hold (at most the model's block count)."""
    free = gpu.memory_bytes - reserve_bytes(spec)
    per_block = bytes_per_block(gpu, spec, quant, attn_cache_tokens, extra_bytes_per_block)
    return min(spec.num_layers, max(0, free // per_block))


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
    extra_bytes_per_block: int = 0

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def hosts(self) -> list[str]:
        return [g.host for g in self.gpus]

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
    extra_bytes_per_block: int = 0,
) -> _Inputs:
    if quant not in QUANTS:
        raise PlanError(f"quant={quant!r} is not supported (accepted: {', '.join(QUANTS)})")
    if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
        raise PlanError(f"replication={replication!r} is not allowed (accepted: an integer >= 1)")
    tokens = default_attn_cache_tokens(spec) if attn_cache_tokens is None else attn_cache_tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise PlanError(f"attn_cache_tokens={tokens!r} is not allowed (accepted: an integer >= 1)")
    extra = extra_bytes_per_block
    if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
        raise PlanError(
            f"extra_bytes_per_block={extra!r} is not allowed (accepted: an integer >= 0)"
        )
    if not gpus:
        raise PlanError("no GPUs to plan for (give each GPU server its petals_gpu_memory_gib)")
    seen: set[GpuKey] = set()
    for gpu in gpus:
        if gpu.key in seen:
            raise PlanError(f"{gpu.label} is listed twice (each host/GPU index once)")
        seen.add(gpu.key)
        if gpu.memory_bytes <= 0:
            raise PlanError(f"{gpu.label}: memory_bytes={gpu.memory_bytes} must be positive")
    per_block = tuple(bytes_per_block(g, spec, quant, tokens, extra) for g in gpus)
    caps = tuple(block_capacity(g, spec, quant, tokens, extra) for g in gpus)
    return _Inputs(tuple(gpus), spec, quant, replication, tokens, per_block, caps, extra)


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
        f"the GPUs hold {held} (missing {missing} blocks ≈ {size_text(missing * size)} of GPU "
        f"memory at {size_text(size, 2)} per block with a {inputs.attn_cache_tokens}-token "
        f"attention cache; {_reach_hint(inputs)}; {_shortfall_hint(inputs)}); "
        "add GPUs or quantize (int8, nf4)" + (" or lower the replication" if copies > 1 else "")
    )


def _coverage(ranges: Iterable[BlockRange], num_layers: int | None = None) -> tuple[int, ...]:
    ranges = list(ranges)
    size = num_layers if num_layers is not None else max((e for _, e in ranges), default=0)
    delta = [0] * (size + 1)
    for start, end in ranges:
        delta[start] += 1
        delta[end] -= 1
    return tuple(accumulate(delta[:size]))


# --- Fresh plans: `replication` lines, each holding every block once, hosts kept apart ---------


def _fresh_ranges(inputs: _Inputs) -> dict[int, BlockRange]:
    ranges = best_layout(inputs.caps, inputs.hosts, inputs.replication, inputs.num_layers)
    if ranges is None:
        layers, copies = inputs.num_layers, inputs.replication
        raise PlanError(
            f"the GPUs hold {sum(inputs.caps)} block slots, enough for {layers} blocks x{copies} "
            "in total, but one server per GPU serves one contiguous range and the GPUs cannot be "
            f"grouped into {copies} sets that each hold all {layers} blocks; "
            f"{_reach_hint(inputs)}; {_shortfall_hint(inputs)}. Lower the replication, "
            "shrink the attention cache or add GPUs"
        )
    return ranges


def reachable_replication(caps: Sequence[int], layers: int) -> int:
    """The highest replication devices with these block capacities reach (0: not one copy)."""
    return max_lines(caps, layers)


def _reach_hint(inputs: _Inputs) -> str:
    reach = reachable_replication(inputs.caps, inputs.num_layers)
    if reach == 0:
        return "these GPUs cannot hold even one copy"
    return f"these GPUs reach replication {reach}"


def _shortfall_hint(inputs: _Inputs) -> str:
    """How many more devices of which size would make the plan possible."""
    cpu = all(g.cpu for g in inputs.gpus)
    sizes = {round(g.memory_bytes / GiB) for g in inputs.gpus if g.cpu == cpu}
    if not cpu:
        sizes |= set(SUGGESTED_GPU_GIB)
    options: list[tuple[int, int]] = []
    layers, copies = inputs.num_layers, inputs.replication
    for size in sorted(sizes):
        extra = Gpu("new", 0, size * GiB, cpu=cpu)
        cap = block_capacity(
            extra, inputs.spec, inputs.quant, inputs.attn_cache_tokens, inputs.extra_bytes_per_block
        )
        if cap == 0:
            continue
        for count in range(1, copies * (layers // cap + 1) + 1):
            if cover_lines([*inputs.caps, *[cap] * count], copies, layers) is not None:
                options.append((count, size))
                break
    if not options:
        return "no single device size closes the gap"
    options.sort()
    (count, size), others = options[0], options[1:3]
    kind = ("CPU host" if cpu else "GPU") + ("" if count == 1 else "s")
    alternatives = "".join(f", or {n} of {gib} GiB" for n, gib in others)
    return f"adding {count} more {kind} of {size} GiB{alternatives} would close it"


def plan(
    gpus: Sequence[Gpu],
    spec: ModelSpec,
    *,
    quant: str = "bf16",
    replication: int = 1,
    attn_cache_tokens: int | None = None,
    extra_bytes_per_block: int = 0,
) -> Plan:
    """Lay out ``spec``'s blocks so each has ``replication`` servers on as many hosts as the
    hardware allows, load spread evenly (see ``_fresh_ranges`` for the order of preference)."""
    inputs = _validate(gpus, spec, quant, replication, attn_cache_tokens, extra_bytes_per_block)
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
    extra_bytes_per_block: int = 0,
) -> Plan:
    """A plan for ``gpus`` that changes as few running servers as it can.

    ``previous`` is a Plan or the ranges that run now (``swarm.plan_render.ranges_from_dict``
    of a saved plan or of the layout the hosts report).
    Devices whose previous range still fits keep it. Blocks left short are covered by idle
    devices first (new servers, nobody restarts), then by widening running ranges (that server
    restarts, but drops none of its blocks). Devices still idle after that take the least-served
    window. Only if that cannot reach the target, or the repair puts replicas of a block on one
    host that the running servers kept apart (and a fresh plan would not), is a fresh plan made
    (replan never restarts servers merely to improve on today's host sharing), with its
    ranges matched to the old ones among devices of equal capacity (unless that matching puts
    replicas back together).
    """
    inputs = _validate(gpus, spec, quant, replication, attn_cache_tokens, extra_bytes_per_block)
    _require_capacity(inputs)
    old = previous.ranges() if isinstance(previous, Plan) else dict(previous)
    kept = {}
    for i, gpu in enumerate(inputs.gpus):
        start, end = old.get(gpu.key, (0, 0))
        if 0 <= start < end <= inputs.num_layers and end - start <= inputs.caps[i]:
            kept[i] = (start, end)
    hosts, layers = inputs.hosts, inputs.num_layers
    repaired = _repair(inputs, kept)
    if repaired is not None and conflicts(repaired, hosts, layers) <= conflicts(
        kept, hosts, layers
    ):
        _add_spares(inputs, repaired)
        return inputs.finish(repaired)
    fresh = _fresh_ranges(inputs)
    if repaired is not None and conflicts(repaired, hosts, layers) <= conflicts(
        fresh, hosts, layers
    ):
        _add_spares(inputs, repaired)
        return inputs.finish(repaired)
    # A fresh layout keeps replicas apart that keeping the running ranges would put on one
    # host: the host stays the failure domain, at the price of more restarts.
    ranges = _align(inputs, fresh, old)
    if conflicts(ranges, hosts, layers) > conflicts(fresh, hosts, layers):
        ranges = fresh
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
