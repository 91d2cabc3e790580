"""The index check's arithmetic: agreement, calibration line, extremes and the merged scores."""

from __future__ import annotations

import numpy as np
import pytest

from infra_pl.influence.index_check import combine, extreme_rows, fit_agreement


def test_fit_agreement_is_least_squares_pearson_and_spearman():
    rng = np.random.default_rng(0)
    index = rng.normal(size=50)
    exact = 3.0 * index + 0.5 + rng.normal(scale=0.3, size=50)
    got = fit_agreement("f", index, exact)
    slope, intercept = np.polyfit(index, exact, 1)
    assert got.slope == pytest.approx(slope) and got.intercept == pytest.approx(intercept)
    assert got.pearson == pytest.approx(np.corrcoef(index, exact)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 (no ties here)
    assert got.spearman == pytest.approx(np.corrcoef(ranks(index), ranks(exact))[0, 1])
    assert got.examples == 50 and "Pearson" in got.sentence()
    tied = fit_agreement("t", np.array([1.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert tied.spearman == pytest.approx(np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])


def test_fit_agreement_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="at least 3"):
        fit_agreement("f", np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="non-finite"):
        fit_agreement("f", np.array([1.0, np.nan, 2.0]), np.ones(3))
    with pytest.raises(ValueError, match="index scores for"):
        fit_agreement("f", np.ones(3), np.ones(4))


def test_extremes_and_combine():
    scores = np.array([[0.0, 5.0], [3.0, 1.0], [-2.0, 2.0], [1.0, -4.0], [2.0, 0.0]])
    assert extreme_rows(scores, 1) == [0, 1, 2, 3]  # highest and lowest of each column
    assert extreme_rows(scores, 0) == []
    line = [fit_agreement(n, scores[:, m], 2 * scores[:, m] + 1) for m, n in enumerate("ab")]
    merged, mask = combine(scores, {4: np.array([10.0, 20.0])}, line)
    assert mask.tolist() == [False, False, False, False, True]
    assert np.allclose(merged[:4], 2 * scores[:4] + 1) and merged[4].tolist() == [10.0, 20.0]
    raw, _ = combine(scores, {}, None)
    assert np.array_equal(raw, scores)
