import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.errors import ConfigError
from swarm.modelspecs import ModelSpec, lookup, spec_from_config
from swarm.plan_render import coverage_runs, plan_to_dict, ranges_from_dict, render_plan_table
from swarm.planner import (
    GiB,
    Gpu,
    Plan,
    PlanError,
    block_capacity,
    describe_changes,
    plan,
    replan,
)

pytestmark = pytest.mark.unit

LLAMA_70B = lookup("petals-team/StableBeluga2")
TINY = spec_from_config(
    {
        "model_type": "llama",
        "num_hidden_layers": 8,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
    },
    name="tiny",
)


def gpus(host: str, *sizes_gib: float) -> list[Gpu]:
    return [Gpu(host, i, round(size * GiB)) for i, size in enumerate(sizes_gib)]


GORINA7 = gpus("gorina7", 40, 40, 40, 40)
MIXED = [*gpus("big", 80), *gpus("lab", 40, 40), *gpus("desk", 24)]


def assert_valid(result: Plan, replication: int) -> None:
    layers = result.num_layers
    assert all(n >= replication for n in result.coverage()), result.coverage()
    for a in result.assignments:
        assert 0 <= a.start <= a.end <= layers
        assert a.num_blocks <= a.capacity
        assert a.memory_planned_bytes <= a.gpu.memory_bytes


@pytest.mark.parametrize(
    ("gpu", "quant", "tokens", "expected"),
    [
        (Gpu("a", 0, 40 * GiB), "bf16", None, 22),  # the guide: ~22 bf16 blocks on an A100 40 GB
        (Gpu("a", 0, 40 * GiB), "int8", None, 42),  # rope tables counted (8 MiB per block)
        (Gpu("a", 0, 40 * GiB), "nf4", None, 75),  # the guide: ~78 (without rope tables)
        (Gpu("a", 0, 40 * GiB), "nf4", 8192, 80),  # a smaller cache: the whole model
        (Gpu("a", 0, 80 * GiB), "bf16", None, 46),
        (Gpu("a", 0, 24 * GiB), "bf16", None, 12),
        (Gpu("a", 0, 4 * GiB), "bf16", None, 0),
    ],
)
def test_block_capacity_per_gpu(gpu: Gpu, quant: str, tokens: int | None, expected: int) -> None:
    assert block_capacity(gpu, LLAMA_70B, quant, tokens or 16384) == expected


@pytest.mark.parametrize(
    ("devices", "quant", "replication", "tokens", "expected_ranges"),
    [
        (GORINA7, "bf16", 1, None, [(0, 20), (20, 40), (40, 60), (60, 80)]),
        (GORINA7, "int8", 2, None, [(0, 40), (0, 40), (40, 80), (40, 80)]),
        (GORINA7, "nf4", 1, None, [(0, 20), (20, 40), (40, 60), (60, 80)]),
        (GORINA7, "nf4", 2, None, [(0, 40), (0, 40), (40, 80), (40, 80)]),
        (GORINA7, "nf4", 3, 8192, [(0, 40), (0, 80), (0, 80), (40, 80)]),
        (GORINA7, "nf4", 4, 8192, [(0, 80)] * 4),
        (MIXED, "bf16", 1, None, [(0, 36), (36, 53), (53, 70), (70, 80)]),  # ~ capacity 46:22:22:12
        (  # two even lines (46+22+22 each), each laid out in proportion to capacity
            gpus("h", 80, 80, 40, 40, 40, 40),
            "bf16",
            2,
            None,
            [(0, 41), (0, 41), (41, 61), (41, 61), (61, 80), (61, 80)],
        ),
    ],
    ids=[
        "g7-bf16",
        "g7-int8-x2",
        "g7-nf4",
        "g7-nf4-x2",
        "g7-nf4-x3",
        "g7-nf4-x4",
        "mixed",
        "balanced-lines-x2",
    ],
)
def test_plans_for_known_machines(devices, quant, replication, tokens, expected_ranges) -> None:
    result = plan(
        devices, LLAMA_70B, quant=quant, replication=replication, attn_cache_tokens=tokens
    )
    assert [(a.start, a.end) for a in result.assignments] == expected_ranges
    assert_valid(result, replication)


@pytest.mark.parametrize("replication", [1, 2, 3, 4])
def test_replication_targets_on_gorina7_nf4_with_a_smaller_cache(replication: int) -> None:
    result = plan(GORINA7, LLAMA_70B, quant="nf4", replication=replication, attn_cache_tokens=8192)
    assert min(result.coverage()) == replication
    assert sum(a.num_blocks for a in result.assignments) == 80 * replication


@pytest.mark.parametrize(
    ("devices", "quant", "replication", "tokens", "fragments"),
    [
        (
            GORINA7[:3],
            "bf16",
            1,
            None,
            ["need 80 block slots", "hold 66", "missing 14 blocks", "GiB of GPU memory"],
        ),
        (GORINA7, "bf16", 2, None, ["need 160 block slots", "missing 72 blocks", "replication 1"]),
        # 304 slots would be enough, but no GPU holds all 80 blocks: 3 copies need 6 servers.
        (GORINA7, "nf4", 3, None, ["contiguous", "reach replication 2"]),
        (gpus("small", 4, 4), "bf16", 1, None, ["hold 0", "cannot hold even one copy"]),
    ],
)
def test_insufficient_capacity_says_what_is_missing(
    devices, quant, replication, tokens, fragments
) -> None:
    with pytest.raises(PlanError) as info:
        plan(devices, LLAMA_70B, quant=quant, replication=replication, attn_cache_tokens=tokens)
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2
    for fragment in fragments:
        assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"replication": 0}, "replication=0"),
        ({"replication": True}, "replication=True"),
        ({"quant": "fp8"}, "quant='fp8'"),
        ({"attn_cache_tokens": 0}, "attn_cache_tokens=0"),
        ({"gpus": []}, "no GPUs"),
        ({"gpus": [Gpu("a", 0, GiB), Gpu("a", 0, GiB)]}, "listed twice"),
        ({"gpus": [Gpu("a", 0, 0)]}, "must be positive"),
    ],
)
def test_invalid_inputs_are_refused(kwargs: dict, fragment: str) -> None:
    args = {"gpus": GORINA7, **kwargs}
    devices = args.pop("gpus")
    with pytest.raises(PlanError, match=fragment.replace("(", r"\(")):
        plan(devices, LLAMA_70B, **args)


def test_a_gpu_too_small_for_one_block_is_left_idle_and_reported() -> None:
    result = plan([*GORINA7, Gpu("old", 0, 2 * GiB)], LLAMA_70B)
    idle = result.assignments[-1]
    assert (idle.capacity, idle.num_blocks, idle.memory_planned_bytes) == (0, 0, 0)
    assert "old gpu 0: too small for one block" in render_plan_table(result)
    assert plan_to_dict(result)["idle"] == [
        {"host": "old", "gpu": 0, "reason": "too small for one block"}
    ]


def test_plans_are_deterministic() -> None:
    args = ([*MIXED, *GORINA7], LLAMA_70B)
    assert plan(*args, replication=2) == plan(*args, replication=2)


def test_load_follows_capacity_in_a_mixed_box() -> None:
    result = plan(MIXED, LLAMA_70B)
    shares = [a.num_blocks / a.capacity for a in result.assignments]
    assert max(shares) - min(shares) < 0.1


def test_table_shows_every_gpu_and_the_coverage_summary() -> None:
    table = render_plan_table(plan(GORINA7, LLAMA_70B, quant="nf4", replication=2))
    assert table.splitlines()[2].split() == ["HOST", "GPU", "MEMORY", "BLOCKS", "COUNT", "PLANNED"]
    assert "gorina7    0  40.0 GiB  0:40       40  22.6 GiB" in table
    assert "  blocks 0-79: 2 servers" in table


def test_coverage_runs_compress_equal_neighbours() -> None:
    devices = gpus("h", 80, 80, 80)
    result = replan({("h", 0): (0, 10), ("h", 1): (5, 20)}, devices, TINY)
    assert coverage_runs(result) == [
        (first, last, n) for first, last, n in _runs_by_hand(result.coverage())
    ]
    table = render_plan_table(
        Plan("m", 8, "bf16", 1, 16, tuple(plan(gpus("h", 80, 80), TINY).assignments))
    )
    assert "blocks 0-7: 1 server\n" in table


def _runs_by_hand(coverage: tuple[int, ...]) -> list[tuple[int, int, int]]:
    runs = []
    for key, group in itertools.groupby(enumerate(coverage), key=lambda p: p[1]):
        blocks = [b for b, _ in group]
        runs.append((blocks[0], blocks[-1], key))
    return runs


def test_plan_dict_is_json_and_round_trips_ranges() -> None:
    result = plan(MIXED, LLAMA_70B)
    document = json.loads(json.dumps(plan_to_dict(result)))
    assert document["hosts"]["lab"] == [
        {"gpu": 0, "cpu": False, "start": 36, "end": 53},
        {"gpu": 1, "cpu": False, "start": 53, "end": 70},
    ]
    assert document["coverage"] == [{"start": 0, "end": 80, "servers": 1}]
    assert ranges_from_dict(document) == result.ranges()


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"hosts": []},
        {"hosts": {"a": [{"gpu": 0, "start": "0", "end": 4}]}},
        {"hosts": {"a": 1}},
    ],
)
def test_malformed_previous_plans_are_refused(document) -> None:
    with pytest.raises(PlanError, match="previous plan"):
        ranges_from_dict(document)


# --- Re-planning -------------------------------------------------------------------------------

SIX_80 = gpus("h", 80, 80, 80, 80, 80, 80)


def test_removing_one_gpu_only_widens_its_neighbours() -> None:
    before = plan(SIX_80, LLAMA_70B, replication=2)
    removed = ("h", 2)
    assert before.ranges()[removed] == (27, 54)
    survivors = [g for g in SIX_80 if g.key != removed]
    after = replan(before, survivors, LLAMA_70B, replication=2)
    assert_valid(after, 2)
    old, new = before.ranges(), after.ranges()
    changed = {key for key in new if new[key] != old[key]}
    assert len(changed) == 2
    for key in changed:  # grown over the hole, nothing dropped
        assert new[key][0] <= old[key][0] and new[key][1] >= old[key][1]
    newly_loaded = sum((new[k][1] - new[k][0]) - (old[k][1] - old[k][0]) for k in changed)
    assert newly_loaded == 54 - 27


def test_removing_an_edge_gpu_still_gives_a_valid_plan() -> None:
    five = gpus("h", 80, 80, 80, 80, 80)
    before = plan(five, LLAMA_70B, replication=2)
    after = replan(before, five[:3] + five[4:], LLAMA_70B, replication=2)
    assert_valid(after, 2)
    assert describe_changes(before.ranges(), after)  # something had to move


def test_adding_a_gpu_changes_no_existing_range() -> None:
    before = plan(GORINA7, LLAMA_70B)
    newcomer = Gpu("gorina8", 0, 40 * GiB)
    after = replan(before, [*GORINA7, newcomer], LLAMA_70B)
    new = after.ranges()
    assert {k: v for k, v in new.items() if k != newcomer.key} == before.ranges()
    assert new[newcomer.key] == (0, 22)  # a spare takes the least-served window
    assert describe_changes(before.ranges(), after) == ["gorina8 gpu 0: start 0:22"]


def test_a_replacement_gpu_fills_the_hole_without_restarting_anyone() -> None:
    before = plan(GORINA7, LLAMA_70B)
    replacement = Gpu("gorina8", 0, 80 * GiB)  # a fresh plan would move every range
    now = [g for g in GORINA7 if g.index != 2] + [replacement]
    after = replan(before, now, LLAMA_70B)
    assert describe_changes(before.ranges(), after) == [
        "gorina7 gpu 2: stop (was 40:60)",
        "gorina8 gpu 0: start 40:60",
    ]


def test_a_gpu_that_shrank_is_refilled_without_touching_unrelated_ranges() -> None:
    four = gpus("h", 80, 80, 80, 80)
    before = plan(four, LLAMA_70B)
    assert before.ranges()[("h", 2)] == (40, 60)
    shrunk = [*four[:2], Gpu("h", 2, 24 * GiB), four[3]]  # 12 blocks fit now
    after = replan(before, shrunk, LLAMA_70B)
    assert_valid(after, 1)
    assert after.ranges()[("h", 0)] == (0, 20)
    assert after.ranges()[("h", 2)][1] - after.ranges()[("h", 2)][0] <= 12


def test_replanning_the_same_inputs_changes_nothing() -> None:
    before = plan(MIXED, LLAMA_70B)
    after = replan(before.ranges(), MIXED, LLAMA_70B)
    assert after.ranges() == before.ranges()
    assert describe_changes(before.ranges(), after) == []


def test_replan_refuses_what_plan_refuses() -> None:
    with pytest.raises(PlanError, match="missing"):
        replan(plan(GORINA7, LLAMA_70B), GORINA7[:3], LLAMA_70B)


# --- Properties --------------------------------------------------------------------------------

SIZES_GIB = st.sampled_from([2, 8, 12, 16, 20, 24, 32, 40, 48, 80])
DEVICES = st.lists(SIZES_GIB, min_size=1, max_size=6).map(lambda s: gpus("h", *s))
QUANT = st.sampled_from(["bf16", "int8", "nf4"])
TOKENS = st.sampled_from([1024, 8192, 16384, 32768])


def _partition_exists(caps: list[int], lines: int, layers: int) -> bool:
    """Brute force: can the devices be split into `lines` groups each holding every block?"""
    for choice in itertools.product(range(lines), repeat=len(caps)):
        sums = [0] * lines
        for cap, line in zip(caps, choice, strict=True):
            sums[line] += cap
        if min(sums) >= layers:
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(devices=DEVICES, quant=QUANT, replication=st.integers(1, 4), tokens=TOKENS)
def test_any_plan_covers_every_block_within_memory(devices, quant, replication, tokens) -> None:
    caps = [block_capacity(g, LLAMA_70B, quant, tokens) for g in devices]
    feasible = _partition_exists(caps, replication, LLAMA_70B.num_layers)
    try:
        result = plan(
            devices, LLAMA_70B, quant=quant, replication=replication, attn_cache_tokens=tokens
        )
    except PlanError:
        assert not feasible, f"a plan exists for capacities {caps} x{replication}"
        return
    assert feasible
    assert_valid(result, replication)


@settings(max_examples=150, deadline=None)
@given(
    devices=DEVICES,
    replication=st.integers(1, 3),
    drop=st.integers(0, 5),
    extra=st.lists(SIZES_GIB, max_size=2),
)
def test_replan_after_losing_and_adding_gpus_stays_valid(devices, replication, drop, extra):
    try:
        before = plan(devices, LLAMA_70B, quant="nf4", replication=replication)
    except PlanError:
        return
    now = [g for g in devices if g.index != drop] + gpus("new", *extra)
    try:
        fresh = plan(now, LLAMA_70B, quant="nf4", replication=replication)
    except PlanError:
        fresh = None
    try:
        after = replan(before, now, LLAMA_70B, quant="nf4", replication=replication)
    except PlanError:
        assert fresh is None, "replan refused what plan can do"
        return
    assert_valid(after, replication)
    assert [a.gpu for a in after.assignments] == now
    if drop >= len(devices):  # nothing lost: every running range is kept
        old = before.ranges()
        assert {k: v for k, v in after.ranges().items() if k in old} == old


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(2, 64), min_size=1, max_size=5), replication=st.integers(1, 3))
def test_tiny_model_plans_on_cpu_hosts(sizes: list[int], replication: int) -> None:
    devices = [Gpu(f"cpu{i}", 0, size * GiB, cpu=True) for i, size in enumerate(sizes)]
    spec: ModelSpec = TINY
    result = plan(devices, spec, replication=min(replication, len(devices)))
    assert_valid(result, min(replication, len(devices)))


def test_rope_tables_are_counted_as_a_server_allocates_them() -> None:
    """Llama-3.1's 131072 positions would cost 128 MiB of fp32 rope tables per block if built up
    front; the kit's llama3 rope grows them to the longest session a server admits (8192)."""
    from swarm.modelspecs import lookup, rope_table_bytes_per_block
    from swarm.planner import bytes_per_block, server_max_session_tokens

    llama31 = lookup("meta-llama/Llama-3.1-70B-Instruct")
    gpu = Gpu("a", 0, 40 * GiB)
    with_rope = bytes_per_block(gpu, llama31, "bf16", 16384)
    rope = rope_table_bytes_per_block(llama31, server_max_session_tokens(llama31))
    assert rope == 2 * 8192 * 128 * 4  # cos + sin, fp32, head_dim 128, 8192 rows
    assert rope < rope_table_bytes_per_block(llama31, llama31.max_context) // 8
    assert with_rope == bytes_per_block(gpu, LLAMA_70B, "bf16", 16384)  # same shapes, same rows
