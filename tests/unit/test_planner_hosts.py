"""The planner with the host as failure domain, exact feasibility and shortfall advice.

The brute-force cross-checks enumerate every assignment of ranges to small devices, so they test
the planner against the definition rather than against its own construction.
"""

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.modelspecs import lookup
from swarm.plan_cover import best_layout, conflicts, cover_lines, coverage
from swarm.plan_render import plan_to_dict, render_plan_table
from swarm.planner import GiB, Gpu, PlanError, block_capacity, plan, replan

pytestmark = pytest.mark.unit

LLAMA_70B = lookup("petals-team/StableBeluga2")


def gpus(host: str, *sizes_gib: float) -> list[Gpu]:
    return [Gpu(host, i, round(size * GiB)) for i, size in enumerate(sizes_gib)]


def blocks_per_host(result, host: str) -> list[int]:
    """How many servers on ``host`` hold each block."""
    spans = [(a.start, a.end) for a in result.assignments if a.gpu.host == host and a.num_blocks]
    return list(coverage(spans, result.num_layers))


@pytest.mark.parametrize(
    ("devices", "quant", "replication"),
    [
        # The measurements: the old planner put both copies of blocks 0-39 on host a.
        ([*gpus("a", 40, 40, 40, 40), *gpus("b", 40, 40, 40, 40)], "bf16", 2),
        # ... and all three int8 copies of blocks 0-19 on host 1.
        (
            [*gpus("h1", 40, 40, 40, 40), *gpus("h2", 40, 40, 40, 40), *gpus("h3", 40, 40)],
            "int8",
            3,
        ),
        # Hosts of unequal size: host c's pieces wrap from the end of one line to the next.
        ([*gpus("a", 80, 40), *gpus("b", 40, 40, 24), *gpus("c", 48, 24)], "bf16", 2),
        ([*gpus("a", 40, 40), *gpus("b", 40, 40), *gpus("c", 40, 40)], "int8", 2),
    ],
    ids=["2x4xA100-bf16-x2", "3-hosts-int8-x3", "uneven-hosts-x2", "3x2x40-int8-x2"],
)
def test_every_block_has_its_replicas_on_distinct_hosts(devices, quant, replication) -> None:
    result = plan(devices, LLAMA_70B, quant=quant, replication=replication)
    assert min(result.coverage()) >= replication
    for host in {g.host for g in devices}:
        assert max(blocks_per_host(result, host)) <= 1, host
    assert result.host_conflicts() == 0
    assert result.servers_left_after_losing_a_host() >= replication - 1
    assert "every block's replicas are on distinct hosts" in render_plan_table(result)
    assert plan_to_dict(result)["host_conflicts"] == 0


def test_one_host_falls_back_to_distinct_gpus_and_says_so() -> None:
    result = plan(gpus("solo", 40, 40, 40, 40), LLAMA_70B, quant="int8", replication=2)
    assert min(result.coverage()) == 2
    assert result.servers_left_after_losing_a_host() == 0
    assert "Hosts: one host runs every server" in render_plan_table(result)


def test_the_split_the_old_heuristic_refused_is_found() -> None:
    # The example was 48,32,24 + 24,20,11; since the planner counts the rope tables too
    # (8 MiB per block), the 11 GB card holds one block fewer and no split exists (160 = 2 x 80
    # only as 51+33+24+24+19+9, which cannot be cut into two lines): one more GB restores it.
    devices = [*gpus("x", 48, 32, 24), *gpus("y", 24, 20, 12)]
    caps = [block_capacity(g, LLAMA_70B, "int8", 16384) for g in devices]
    assert cover_lines(caps, 2, 80) is not None  # a split exists
    result = plan(devices, LLAMA_70B, quant="int8", replication=2)
    assert min(result.coverage()) >= 2


def test_a_host_loss_after_replanning_keeps_hosts_apart() -> None:
    devices = [*gpus("a", 80, 80, 80), *gpus("b", 80, 80, 80), *gpus("c", 80, 80, 80)]
    before = plan(devices, LLAMA_70B, replication=2)
    assert before.host_conflicts() == 0
    survivors = [g for g in devices if g.host != "b"]
    after = replan(before, survivors, LLAMA_70B, replication=2)
    assert min(after.coverage()) >= 2
    assert after.host_conflicts() == 0


def _shortfall(message: str) -> tuple[int, int]:
    match = re.search(r"adding (\d+) more GPUs? of (\d+) GiB", message)
    assert match, message
    return int(match[1]), int(match[2])


@pytest.mark.parametrize(
    ("devices", "quant", "replication"),
    [
        (gpus("g", 40, 40, 40, 40), "bf16", 2),
        (gpus("g", 40, 40, 40), "bf16", 1),
        (gpus("g", 40, 40, 40, 40), "nf4", 3),  # enough slots, but not in 3 lines
    ],
)
def test_a_shortfall_names_how_many_gpus_of_which_size_close_it(devices, quant, replication):
    with pytest.raises(PlanError) as info:
        plan(devices, LLAMA_70B, quant=quant, replication=replication)
    count, size = _shortfall(str(info.value))
    extra = gpus("new", *[size] * count)
    fixed = plan([*devices, *extra], LLAMA_70B, quant=quant, replication=replication)
    assert min(fixed.coverage()) >= replication
    with pytest.raises(PlanError):  # and not one fewer
        plan([*devices, *extra[:-1]], LLAMA_70B, quant=quant, replication=replication)


def test_extra_bytes_per_block_shrink_what_fits() -> None:
    gpu = Gpu("a", 0, 40 * GiB)
    assert block_capacity(gpu, LLAMA_70B, "bf16", 16384) == 22
    assert block_capacity(gpu, LLAMA_70B, "bf16", 16384, extra_bytes_per_block=GiB) < 22
    with pytest.raises(PlanError, match="extra_bytes_per_block=-1"):
        plan([gpu], LLAMA_70B, extra_bytes_per_block=-1)


# --- Brute force: the definitions, checked on every small case --------------------------------


def _brute_force(caps: list[int], hosts: list[str], lines: int, layers: int) -> int | None:
    """Fewest shared-host replicas over every way to give each device one range (None: no plan)."""
    options = [
        [None, *((s, e) for s in range(layers) for e in range(s + 1, min(layers, s + c) + 1))]
        for c in caps
    ]
    best = None
    for combo in itertools.product(*options):
        ranges = {i: r for i, r in enumerate(combo) if r is not None}
        if ranges and min(coverage(list(ranges.values()), layers)) >= lines:
            shared = conflicts(ranges, hosts, layers)
            best = shared if best is None else min(best, shared)
            if best == 0:
                break
    return best


SMALL = st.integers(2, 5).flatmap(
    lambda layers: st.tuples(
        st.just(layers),
        st.lists(st.tuples(st.integers(0, layers), st.sampled_from("abc")), min_size=1, max_size=4),
        st.integers(1, 3),
    )
)


@settings(max_examples=200, deadline=None)
@given(case=SMALL)
def test_brute_force_agrees_on_feasibility_and_on_distinct_hosts(case) -> None:
    layers, devices, lines = case
    caps = [c for c, _ in devices]
    hosts = [h for _, h in devices]
    truth = _brute_force(caps, hosts, lines, layers)
    found = best_layout(caps, hosts, lines, layers)
    assert (found is None) == (truth is None), (caps, hosts, lines, layers)
    assert (cover_lines(caps, lines, layers) is None) == (truth is None)
    if found is None or truth is None:
        return
    assert min(coverage(list(found.values()), layers)) >= lines
    assert all(e - s <= caps[i] for i, (s, e) in found.items())
    shared = conflicts(found, hosts, layers)
    assert shared >= truth
    if truth == 0:  # distinct hosts whenever any layout has them
        assert shared == 0, (caps, hosts, lines, layers, found)
