"""Subset draws and the resumable retrain loop (a fake retrain function counts the work done)."""

from __future__ import annotations

import pytest

from infra_pl.lds.subsets import (
    RetrainJob,
    RetrainRecord,
    RetrainStore,
    draw_subsets,
    run_retrains,
    subset_digest,
)


def test_draw_subsets_sizes_determinism_and_independence():
    subsets = draw_subsets(100, 0.3, 5, seed=4)
    assert [len(s) for s in subsets] == [30] * 5
    assert all(s == sorted(set(s)) and 0 <= s[0] and s[-1] < 100 for s in subsets)
    assert draw_subsets(100, 0.3, 5, seed=4) == subsets
    assert draw_subsets(100, 0.3, 8, seed=4)[:5] == subsets  # subset j does not depend on how many are drawn
    assert draw_subsets(100, 0.3, 5, seed=5) != subsets
    assert len({tuple(s) for s in subsets}) == 5
    with pytest.raises(ValueError, match="alpha"):
        draw_subsets(100, 1.0, 5, seed=0)
    with pytest.raises(ValueError, match="empty or full"):
        draw_subsets(3, 0.1, 5, seed=0)


def test_subset_digest_ignores_order_and_duplicates():
    assert subset_digest([3, 1, 2]) == subset_digest([1, 2, 3, 3])
    assert subset_digest([1, 2]) != subset_digest([1, 3])


class FakeRetrain:
    """Records calls; raises on the call number ``fail_at`` (an interruption)."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[tuple[tuple[int, ...], int]] = []
        self.fail_at = fail_at

    def __call__(self, indices, seed):
        self.calls.append((tuple(indices), seed))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt("interrupted")
        value = float(sum(indices) + seed)
        return RetrainRecord(subset_digest(indices), seed, len(indices), [value], {"m": value}, 0.0, 0.01)


def test_interrupted_loop_resumes_without_redoing_finished_retrains(tmp_path):
    store = RetrainStore(tmp_path / "retrains")
    jobs = [RetrainJob(f"j{j}", s, 0) for j, s in enumerate(draw_subsets(20, 0.5, 5, seed=0))]
    jobs.append(RetrainJob("j0 again, other seed", jobs[0].indices, 1))
    first = FakeRetrain(fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_retrains(jobs, store, first, log=lambda _: None)
    assert len(store) == 3  # the three finished before the interruption were saved
    second = FakeRetrain()
    records = run_retrains(jobs, store, second, log=lambda _: None)
    assert [c for c in second.calls] == [(tuple(j.indices), j.seed) for j in jobs[3:]]
    assert [r.f["m"] for r in records] == [float(sum(j.indices) + j.seed) for j in jobs]
    third = FakeRetrain()
    assert [r.f for r in run_retrains(jobs, store, third, log=lambda _: None)] == [r.f for r in records]
    assert third.calls == []
