"""The combinatorics under the planner: devices as block capacities, hosts as failure domains.

Pure functions on integers, no model or memory arithmetic (that is ``swarm.planner``'s job).

A "line" is a set of devices whose ranges cover every block once. A family of ranges that covers
every block ``R`` times can always be split into ``R`` such lines (true for intervals on a line),
so "the devices can be grouped into ``R`` sets whose capacities each reach ``layers``" is exactly
the condition for a plan to exist. ``cover_lines`` decides it exactly (a depth-first search with
memoised dead ends, fast for inventories of dozens of devices with a few distinct sizes).

Failure domains: ``conflicts`` counts block replicas that share a host with another replica of
the same block (0: losing any one host costs each block at most one server). Two layouts give 0
when the hardware allows it in the common cases: whole hosts per line (``host_lines``) and the
wrap-around strip (``strip_ranges``, McNaughton's rule: hosts one after another along a strip of
``R * layers`` cut into lines, each host using at most ``layers`` blocks, so the piece it has at
the end of one line and the piece at the start of the next never overlap).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from itertools import accumulate, permutations

BlockRange = tuple[int, int]
# Beyond this many host orders the strip tries a handful of sorted orders only.
STRIP_PERMUTATION_LIMIT = 720


def coverage(ranges: Sequence[BlockRange], layers: int) -> tuple[int, ...]:
    delta = [0] * (layers + 1)
    for start, end in ranges:
        delta[start] += 1
        delta[end] -= 1
    return tuple(accumulate(delta[:layers]))


def cover_lines(caps: Sequence[int], lines: int, layers: int) -> list[list[int]] | None:
    """Exact: indices of ``caps`` split into ``lines`` groups each summing to >= ``layers``.

    Items not needed stay out of every group. ``None`` when no split exists.
    """
    if lines < 1:
        return []
    order = sorted((i for i, c in enumerate(caps) if c > 0), key=lambda i: (-caps[i], i))
    values = [min(caps[i], layers) for i in order]
    suffix = [*reversed([*accumulate(reversed(values))]), 0]
    dead: set[tuple[int, tuple[int, ...]]] = set()
    choice: list[int] = [-1] * len(order)  # line number per item, -1: unused

    def search(k: int, open_lines: tuple[tuple[int, int], ...]) -> bool:
        # open_lines: (deficit, line id), sorted by deficit descending then id
        if not open_lines:
            return True
        deficits = tuple(d for d, _ in open_lines)
        if k == len(order) or suffix[k] < sum(deficits) or len(order) - k < len(open_lines):
            return False
        key = (k, deficits)
        if key in dead:
            return False
        tried: set[int] = set()
        for pos, (deficit, line) in enumerate(open_lines):
            if deficit in tried:  # lines with equal deficits are interchangeable
                continue
            tried.add(deficit)
            rest = deficit - values[k]
            others = open_lines[:pos] + open_lines[pos + 1 :]
            if rest > 0:
                others = tuple(sorted((*others, (rest, line)), key=lambda p: (-p[0], p[1])))
            choice[k] = line
            if search(k + 1, others):
                return True
        choice[k] = -1
        if search(k + 1, open_lines):
            return True
        dead.add(key)
        return False

    if not search(0, tuple((layers, line) for line in range(lines))):
        return None
    groups: list[list[int]] = [[] for _ in range(lines)]
    for item, line in zip(order, choice, strict=True):
        if line >= 0:
            groups[line].append(item)
    return [sorted(g) for g in groups]


def max_lines(caps: Sequence[int], layers: int) -> int:
    """The highest replication these capacities reach exactly (0: not one copy)."""
    for lines in range(sum(min(c, layers) for c in caps) // layers, 0, -1):
        if cover_lines(caps, lines, layers) is not None:
            return lines
    return 0


def lay_out_line(members: Sequence[int], caps: Sequence[int], layers: int) -> dict[int, BlockRange]:
    """Blocks 0..layers-1 over the line's devices in the given order, in proportion to capacity."""
    total = sum(caps[i] for i in members)
    counts = {i: layers * caps[i] // total for i in members}
    by_remainder = sorted(members, key=lambda i: (-(layers * caps[i] % total), i))
    for i in by_remainder[: layers - sum(counts.values())]:
        counts[i] += 1  # never exceeds caps[i]: a full remainder only exists below the cap
    ranges, start = {}, 0
    for i in members:
        ranges[i] = (start, start + counts[i])
        start += counts[i]
    return ranges


def conflicts(ranges: Mapping[int, BlockRange], hosts: Sequence[str], layers: int) -> int:
    """Block replicas that share their host with another replica of the same block."""
    per_host: dict[str, list[BlockRange]] = {}
    for i, block_range in ranges.items():
        per_host.setdefault(hosts[i], []).append(block_range)
    return sum(sum(max(0, n - 1) for n in coverage(spans, layers)) for spans in per_host.values())


def host_loss(ranges: Mapping[int, BlockRange], hosts: Sequence[str], layers: int) -> int:
    """The fewest servers any block keeps when any one host goes down."""
    if not ranges:
        return 0
    worst = layers and min(coverage(list(ranges.values()), layers))
    for host in sorted({hosts[i] for i in ranges}):
        left = [r for i, r in ranges.items() if hosts[i] != host]
        worst = min(worst, min(coverage(left, layers)))
    return worst


def host_lines(
    caps: Sequence[int], hosts: Sequence[str], lines: int, layers: int
) -> list[list[int]] | None:
    """Whole hosts per line (no host in two lines), leftover hosts spread over the lines."""
    names = sorted(set(hosts), key=lambda h: min(i for i, x in enumerate(hosts) if x == h))
    members = {h: [i for i, x in enumerate(hosts) if x == h and caps[i] > 0] for h in names}
    host_caps = [sum(caps[i] for i in members[h]) for h in names]
    groups = cover_lines(host_caps, lines, layers)
    if groups is None:
        return None
    used = {h for g in groups for h in g}
    sums = [sum(host_caps[h] for h in g) for g in groups]
    for h in sorted(set(range(len(names))) - used, key=lambda h: (-host_caps[h], h)):
        if host_caps[h] == 0:
            continue
        target = min(range(lines), key=lambda k: (sums[k], k))
        groups[target].append(h)
        sums[target] += host_caps[h]
    return [sorted(i for h in sorted(g) for i in members[names[h]]) for g in groups]


Layout = tuple[list[list[int]], dict[int, BlockRange]]  # lines (devices in order), ranges


def _strip(
    order: Sequence[Sequence[int]], caps: Sequence[int], lines: int, layers: int, host_limit: int
) -> Layout | None:
    ranges: dict[int, BlockRange] = {}
    members: list[list[int]] = [[]]
    pos = 0
    for devices in order:
        used = 0
        for i in devices:
            take = min(caps[i], layers - pos, host_limit - used)
            if take <= 0 or len(members) > lines:
                continue
            ranges[i] = (pos, pos + take)
            members[-1].append(i)
            pos, used = pos + take, used + take
            if pos == layers:
                members.append([])
                pos = 0
    return (members[:lines], ranges) if len(members) > lines else None


def strip_ranges(
    caps: Sequence[int], hosts: Sequence[str], lines: int, layers: int
) -> list[Layout]:
    """Wrap-around layouts (0 conflicts by construction) for several host orders."""
    names = sorted(set(hosts))
    members = {
        h: sorted(
            (i for i, x in enumerate(hosts) if x == h and caps[i] > 0), key=lambda i: -caps[i]
        )
        for h in names
    }
    host_cap = {h: min(layers, sum(caps[i] for i in members[h])) for h in names}
    # Hosts capped at `layers` blocks: 0 conflicts. Uncapped (when the capped strip cannot
    # reach the target): the overlap is limited to where a host wraps onto itself.
    host_limit = layers if sum(host_cap.values()) >= lines * layers else lines * layers
    orders: Sequence[Sequence[str]]
    if len(names) <= 6:
        orders = list(permutations(names))[:STRIP_PERMUTATION_LIMIT]
    else:
        by_size = sorted(names, key=lambda h: (-host_cap[h], h))
        orders = [by_size, by_size[::-1], names]
    found = []
    for host_order in orders:
        for flip in (False, True):
            seq = [members[h][::-1] if flip else members[h] for h in host_order]
            layout = _strip(seq, caps, lines, layers, host_limit)
            if layout is not None:
                found.append(layout)
        if len(found) >= 8:
            break
    return found


# --- Choosing a layout -----------------------------------------------------------------------


def _split_balanced(caps: Sequence[int], order: list[int], lines: int) -> list[list[int]]:
    """Largest first onto the line with the least capacity so far: lines end up even."""
    groups: list[list[int]] = [[] for _ in range(lines)]
    sums = [0] * lines
    for i in order:
        target = min(range(lines), key=lambda k: (sums[k], k))
        groups[target].append(i)
        sums[target] += caps[i]
    return groups


def _even_lines(caps: Sequence[int], lines: int, layers: int) -> list[list[int]] | None:
    """Every usable device in one of ``lines`` even lines, if that split covers each line."""
    order = sorted((i for i, c in enumerate(caps) if c > 0), key=lambda i: (-caps[i], i))
    groups = _split_balanced(caps, order, lines)
    if all(sum(caps[i] for i in g) >= layers for g in groups):
        return [sorted(g) for g in groups]
    return None


def _spread(caps: Sequence[int], groups: list[list[int]]) -> list[list[int]]:
    """Devices no line needs join the line with the least capacity (lighter ranges for all)."""
    used = {i for g in groups for i in g}
    sums = [sum(caps[i] for i in g) for g in groups]
    for i in sorted(
        (i for i, c in enumerate(caps) if c > 0 and i not in used), key=lambda i: (-caps[i], i)
    ):
        target = min(range(len(groups)), key=lambda k: (sums[k], k))
        groups[target] = sorted([*groups[target], i])
        sums[target] += caps[i]
    return groups


def _host_ordered(groups: list[list[int]], hosts: Sequence[str]) -> list[list[int]]:
    """Each line's devices grouped by host, host order reversed on every other line."""
    rank = {h: n for n, h in enumerate(sorted(set(hosts)))}
    return [
        sorted(g, key=lambda i: (rank[hosts[i]] * (-1 if k % 2 else 1), i))
        for k, g in enumerate(groups)
    ]


def _laid_out(groups: list[list[int]], caps: Sequence[int], layers: int) -> dict[int, BlockRange]:
    ranges: dict[int, BlockRange] = {}
    for group in groups:
        ranges.update(lay_out_line(group, caps, layers))
    return ranges


def _candidates(
    caps: Sequence[int], hosts: Sequence[str], copies: int, layers: int
) -> Iterator[dict[int, BlockRange]]:
    for groups in (
        _even_lines(caps, copies, layers),
        host_lines(caps, hosts, copies, layers),
    ):
        if groups is not None:
            yield _laid_out(groups, caps, layers)
            yield _laid_out(_host_ordered(groups, hosts), caps, layers)
    for lines, packed in strip_ranges(caps, hosts, copies, layers):
        yield _laid_out(lines, caps, layers)
        yield packed
    exact = cover_lines(caps, copies, layers)
    if exact is not None:
        groups = _spread(caps, exact)
        yield _laid_out(groups, caps, layers)
        yield _laid_out(_host_ordered(groups, hosts), caps, layers)


def _fullest(ranges: Mapping[int, BlockRange], caps: Sequence[int]) -> Fraction:
    return max(
        (Fraction(e - s, caps[i]) for i, (s, e) in ranges.items() if e > s), default=Fraction(0)
    )


def best_layout(
    caps: Sequence[int], hosts: Sequence[str], lines: int, layers: int
) -> dict[int, BlockRange] | None:
    """Ranges (device index -> blocks) covering every block ``lines`` times, or None if none exist.

    Preference: fewest replicas sharing a host, then the lightest fullest device (ranges in
    proportion to capacity rather than devices packed to the brim), then the first candidate
    (stable layouts for inventories the earlier planner already laid out).
    """
    best: tuple[tuple[int, Fraction, int], dict[int, BlockRange]] | None = None
    for n, ranges in enumerate(_candidates(caps, hosts, lines, layers)):
        score = (conflicts(ranges, hosts, layers), _fullest(ranges, caps), n)
        if best is None or score < best[0]:
            best = (score, ranges)
    return None if best is None else best[1]
