"""Partition choice: coverage, order, monotonicity in the budget, clear errors; byte parsing."""

from __future__ import annotations

import pytest

from infra_pl.planner import PartitionError, Settings, estimate, parse_bytes, plan_partitions
from tests.planner.test_planner_estimate import tiny_llama


@pytest.fixture(scope="module")
def tiny_estimate():
    return estimate(tiny_llama(device="meta"), Settings(batch_size=2, seq_len=8, measurements=2))


def test_every_module_in_exactly_one_partition_and_fewer_with_more_budget(tiny_estimate):
    names = tiny_estimate.module_names
    one = max(tiny_estimate.peaks().values())
    single = max(max(tiny_estimate.peaks([n]).values()) for n in names)  # the largest module alone
    counts = []
    for budget in sorted({one, (one + single) // 2, single + (one - single) // 4, single}, reverse=True):
        plan = plan_partitions(tiny_estimate, budget)
        flat = [n for group in plan.partitions for n in group]
        assert flat == names  # each module once, model order, consecutive groups
        for group, peaks in zip(plan.partitions, plan.peaks):
            assert all(peak <= budget for peak in peaks.values())
            assert peaks == tiny_estimate.peaks(group)
        counts.append(len(plan.partitions))
    assert counts[0] == 1  # the all-modules peak fits in one partition
    assert counts == sorted(counts) and counts[-1] > 1  # smaller budget -> never fewer partitions


def test_greedy_is_minimal_for_consecutive_groups(tiny_estimate):
    """No budget admits a plan with fewer groups: merging any two neighbouring groups breaks the budget."""
    single = max(max(tiny_estimate.peaks([n]).values()) for n in tiny_estimate.module_names)
    budget = single + (max(tiny_estimate.peaks().values()) - single) // 3
    plan = plan_partitions(tiny_estimate, budget)
    assert len(plan.partitions) >= 2  # the budget is below the whole model's peak
    for left, right in zip(plan.partitions, plan.partitions[1:]):
        merged = left + right[:1]
        assert max(tiny_estimate.peaks(merged).values()) > budget


def test_impossible_budgets_name_the_cause(tiny_estimate):
    floor = max(cost.peak([]) for cost in tiny_estimate.phases.values())
    with pytest.raises(PartitionError, match="before any module's factors"):
        plan_partitions(tiny_estimate, floor - 1)
    # just above the floor, but below what the first module needs on its own
    first = tiny_estimate.module_names[0]
    alone = max(tiny_estimate.peaks([first]).values())
    with pytest.raises(PartitionError, match=f"module '{first}' does not fit on its own"):
        plan_partitions(tiny_estimate, (floor + alone) // 2 if alone > floor + 1 else floor)


def test_headroom_shrinks_the_usable_budget(tiny_estimate):
    one = max(tiny_estimate.peaks().values())
    assert len(plan_partitions(tiny_estimate, one).partitions) == 1
    assert len(plan_partitions(tiny_estimate, one, headroom=0.2).partitions) > 1
    with pytest.raises(ValueError, match="headroom"):
        plan_partitions(tiny_estimate, one, headroom=1.0)


@pytest.mark.parametrize(
    "text,value",
    [("80GiB", 80 * 2**30), ("80 GB", 80 * 10**9), ("512MiB", 512 * 2**20), ("1.5G", int(1.5 * 2**30)), (1024, 1024)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["eighty", "80 GiBs", "-1GiB", "0"])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_bytes(text)
