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


# --------------------------------------------------------------------------- valid masks, differences, engine


def test_valid_mask_restricts_columns_and_matches_a_ratio_bootstrap():
    from infra_pl.report.bootstrap import describe

    x = np.array([1.0, -2.0, 3.0, np.nan, 5.0, 0.5])
    valid = np.isfinite(x)
    stats = describe(x, n_boot=300, seed=4, valid=valid)
    kept = x[valid]
    assert stats["n"][0] == 5
    assert stats["mean"][0] == pytest.approx(kept.mean()) and stats["median"][0] == pytest.approx(np.median(kept))
    assert stats["share_positive"][0] == pytest.approx(0.8)
    # textbook: draw all rows, average the valid ones of each resample
    rng = np.random.default_rng(4)
    idx = rng.integers(0, len(x), size=(300, len(x)), dtype=np.int32)
    filled = np.where(valid, x, 0.0)
    ratio = filled[idx].sum(axis=1) / valid[idx].sum(axis=1)
    np.testing.assert_allclose([stats["mean_ci_low"][0], stats["mean_ci_high"][0]], np.quantile(ratio, [0.025, 0.975]))
    # an all-true mask is the same as no mask
    y = np.array([1.0, 2.0, -3.0, 4.0])
    plain, masked = describe(y, n_boot=100, seed=2), describe(y, n_boot=100, seed=2, valid=np.ones(4, dtype=bool))
    for key in plain:
        np.testing.assert_allclose(plain[key], masked[key])


def textbook_difference(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int, ci: float) -> np.ndarray:
    """Two independent percentile bootstraps from the streams the module documents."""
    ra, rb = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 2])
    boot_a = a[ra.integers(0, len(a), size=(n_boot, len(a)), dtype=np.int32)].mean(axis=1)
    boot_b = b[rb.integers(0, len(b), size=(n_boot, len(b)), dtype=np.int32)].mean(axis=1)
    tail = (1 - ci) / 2
    return np.quantile(boot_a - boot_b, [tail, 1 - tail])


def test_difference_matches_textbook_and_is_deterministic():
    from infra_pl.report.bootstrap import describe_difference

    rng = np.random.default_rng(11)
    a, b = rng.standard_t(3, size=40) + 1.0, rng.standard_t(3, size=40)  # equal sizes: streams must still differ
    out = describe_difference(a, b, n_boot=500, seed=3, ci=0.9)
    assert out["difference"][0] == pytest.approx(a.mean() - b.mean())
    np.testing.assert_allclose([out["ci_low"][0], out["ci_high"][0]], textbook_difference(a, b, 500, 3, 0.9))
    again = describe_difference(a, b, n_boot=500, seed=3, ci=0.9)
    assert again["ci_low"][0] == out["ci_low"][0] and again["ci_high"][0] == out["ci_high"][0]
    other = describe_difference(a, b, n_boot=500, seed=4, ci=0.9)
    assert other["ci_low"][0] != out["ci_low"][0]
    # swapping the sides mirrors the point estimate (the interval is a different, equally valid draw)
    assert describe_difference(b, a, n_boot=500, seed=3)["difference"][0] == pytest.approx(-out["difference"][0])
    empty = describe_difference(a, b[:0], n_boot=10)
    assert np.isnan(empty["difference"][0]) and np.isnan(empty["ci_low"][0])


def test_difference_interval_width_and_known_difference_on_a_large_sample():
    from infra_pl.report.bootstrap import describe_difference

    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 1.0, size=6000), rng.normal(0.7, 1.5, size=4000)
    out = describe_difference(a, b, n_boot=1000, seed=0)
    assert out["ci_low"][0] < 0.3 < out["ci_high"][0]
    half = 1.96 * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert (out["ci_high"][0] - out["ci_low"][0]) / 2 == pytest.approx(half, rel=0.1)


def test_difference_interval_coverage_over_many_small_samples():
    """About 95% of 95% intervals contain the true difference (0.5) across 200 independent data sets."""
    from infra_pl.report.bootstrap import describe_difference

    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        a, b = rng.normal(0.5, 1.0, size=60), rng.normal(0.0, 2.0, size=80)
        out = describe_difference(a, b, n_boot=400, seed=1)
        hits += out["ci_low"][0] <= 0.5 <= out["ci_high"][0]
    assert 0.88 <= hits / 200 <= 0.99


def test_resampled_means_equal_gathered_means_per_block(monkeypatch):
    """The counts-matrix engine gives the means a plain gather of the same indices gives, block by block."""
    import infra_pl.report.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "MAX_ELEMENTS", 90)  # many small blocks
    x = np.random.default_rng(1).normal(size=(30, 3))
    got = bootstrap.resampled_means(x, 25, np.random.default_rng(9))
    expected = np.concatenate([x[idx].mean(axis=1) for idx in bootstrap.resample_blocks(30, 25, np.random.default_rng(9))])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert got.shape == (25, 3)
