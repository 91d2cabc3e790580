"""Bootstrap CIs: equal to a textbook implementation with the same seed, and the analytic properties."""

from __future__ import annotations

import numpy as np
import pytest

from infra_pl.report.bootstrap import describe


def textbook_bootstrap(x: np.ndarray, n_boot: int, seed: int, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """The plain percentile bootstrap, written independently of the module under test."""
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, len(x), size=(n_boot, len(x)), dtype=np.int32)]
    tail = (1 - ci) / 2
    return (np.quantile(samples.mean(axis=1), [tail, 1 - tail]),
            np.quantile((samples > 0).mean(axis=1), [tail, 1 - tail]))


def test_matches_textbook_bootstrap_with_same_seed():
    x = np.array([1.0, 2.0, -3.0, 4.0, 0.5, -0.25, 7.0])
    stats = describe(x, n_boot=500, seed=3, ci=0.9)
    mean_ci, share_ci = textbook_bootstrap(x, 500, 3, 0.9)
    np.testing.assert_allclose([stats["mean_ci_low"][0], stats["mean_ci_high"][0]], mean_ci)
    np.testing.assert_allclose([stats["share_ci_low"][0], stats["share_ci_high"][0]], share_ci)
    assert stats["n"][0] == 7
    assert stats["mean"][0] == pytest.approx(x.mean())
    assert stats["median"][0] == pytest.approx(1.0)  # sorted: -3, -0.25, 0.5, 1, 2, 4, 7
    assert stats["share_positive"][0] == pytest.approx(5 / 7)  # 1, 2, 4, 0.5, 7


def test_columns_share_resamples_and_are_independent_of_each_other():
    x = np.array([[1.0, 5.0], [2.0, -1.0], [-3.0, 0.0], [4.0, 2.0]])
    both = describe(x, n_boot=300, seed=1)
    for j in range(2):
        alone = describe(x[:, j], n_boot=300, seed=1)
        for key in ("mean_ci_low", "mean_ci_high", "share_ci_low", "share_ci_high"):
            assert both[key][j] == pytest.approx(alone[key][0])


def test_interval_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small = rng.standard_t(df=3, size=20)
    large = rng.standard_t(df=3, size=2000)
    s, l = describe(small, n_boot=400), describe(large, n_boot=400)
    for stats in (s, l):
        assert stats["mean_ci_low"][0] <= stats["mean"][0] <= stats["mean_ci_high"][0]
        assert stats["share_ci_low"][0] <= stats["share_positive"][0] <= stats["share_ci_high"][0]
    assert (l["mean_ci_high"] - l["mean_ci_low"])[0] < (s["mean_ci_high"] - s["mean_ci_low"])[0] / 3


def test_degenerate_when_all_values_equal_and_single_value():
    stats = describe(np.full(9, 2.5), n_boot=200)
    assert stats["mean_ci_low"][0] == pytest.approx(2.5) and stats["mean_ci_high"][0] == pytest.approx(2.5)
    assert stats["share_ci_low"][0] == 1.0 and stats["share_ci_high"][0] == 1.0
    one = describe(np.array([-1.0]), n_boot=50)
    assert one["mean_ci_low"][0] == one["mean_ci_high"][0] == -1.0
    assert one["share_positive"][0] == 0.0


def test_empty_group_is_nan_not_an_error():
    stats = describe(np.zeros((0, 2)), n_boot=10)
    assert list(stats["n"]) == [0, 0]
    assert np.isnan(stats["mean"]).all() and np.isnan(stats["mean_ci_low"]).all()


def test_blocked_resampling_for_large_groups_still_covers(monkeypatch):
    import infra_pl.report.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "MAX_ELEMENTS", 1000)  # force many blocks on a small input
    x = np.random.default_rng(5).normal(loc=1.0, size=400)
    stats = bootstrap.describe(x, n_boot=300, seed=0)
    half_width = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert stats["mean_ci_low"][0] == pytest.approx(x.mean() - half_width, abs=0.05)
    assert stats["mean_ci_high"][0] == pytest.approx(x.mean() + half_width, abs=0.05)


@pytest.mark.parametrize("kwargs", [{"n_boot": 0}, {"ci": 1.0}, {"ci": 0.0}])
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        describe(np.ones(3), **kwargs)
