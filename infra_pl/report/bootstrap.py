"""Descriptive statistics with percentile-bootstrap confidence intervals.

Why a bootstrap: influence scores are heavy-tailed (a few examples dominate, paper Fig. 2), so a
normal-theory interval for a group mean can be badly off, and the share of positive examples is a
proportion near 0 or 1 for some groups. The percentile bootstrap needs no distributional
assumption and treats both statistics the same way.

Reproducibility: every call draws from ``numpy.random.default_rng(seed)``, so a group's interval
depends only on its own values and the seed, not on which other groups exist or their order. The
resample indices are one array ``rng.integers(0, n, size=(n_boot, n), dtype=np.int32)``, shared by
every column (measurement) of the group; for very large groups that array is drawn in row blocks
to bound memory (blocks of ``MAX_ELEMENTS // n`` resamples), which gives different - equally valid -
draws. (int32 indices and contiguous per-column copies make the resampling ~5x faster than the
naive version; a 100k-example training set is summarised in seconds per table.)
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["MAX_ELEMENTS", "STATISTICS", "describe", "resample_blocks"]

MAX_ELEMENTS = 4_000_000  # indices held at once (16 MB of int32)
STATISTICS = (
    "n",
    "mean",
    "mean_ci_low",
    "mean_ci_high",
    "median",
    "share_positive",
    "share_ci_low",
    "share_ci_high",
)


def _check(n_boot: int, ci: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be strictly between 0 and 1, got {ci!r}")


def resample_blocks(n: int, n_boot: int, rng: np.random.Generator, max_elements: int = MAX_ELEMENTS) -> Iterator[np.ndarray]:
    """Yield index arrays of shape ``(rows, n)`` whose rows add up to ``n_boot`` resamples.

    One block (the plain ``rng.integers(0, n, size=(n_boot, n), dtype=np.int32)``) whenever it fits
    in ``max_elements``; the tests rely on that to compare against a textbook implementation.
    """
    dtype = np.int32 if n < 2**31 else np.int64
    rows = max(1, max_elements // max(n, 1))
    done = 0
    while done < n_boot:
        take = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(take, n), dtype=dtype)
        done += take


def describe(values: np.ndarray, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict[str, np.ndarray]:
    """Statistics of each column of ``values`` (shape ``(n, m)``): one array of length m per name in
    :data:`STATISTICS`.

    ``share_positive`` is the fraction of values ``> 0`` (positively influential examples, the
    population the paper focuses on). Intervals are percentile intervals (numpy's default linear
    quantile) of the bootstrap distribution of the mean and of the share. An empty group gives
    ``n = 0`` and NaN elsewhere; a single value gives a degenerate interval at that value.
    """
    _check(n_boot, ci)
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    out: dict[str, np.ndarray] = {name: np.full(m, np.nan) for name in STATISTICS}
    out["n"] = np.full(m, n, dtype=np.int64)
    if n == 0:
        return out
    positive = (values > 0).astype(float)
    out["mean"] = values.mean(axis=0)
    out["median"] = np.median(values, axis=0)
    out["share_positive"] = positive.mean(axis=0)

    rng = np.random.default_rng(seed)
    columns = np.ascontiguousarray(values.T)  # gathering from a contiguous row is ~4x faster
    positive_columns = np.ascontiguousarray(positive.T)
    boot_mean = np.empty((n_boot, m))
    boot_share = np.empty((n_boot, m))
    start = 0
    for idx in resample_blocks(n, n_boot, rng):
        stop = start + idx.shape[0]
        for j in range(m):
            boot_mean[start:stop, j] = columns[j][idx].mean(axis=1)
            boot_share[start:stop, j] = positive_columns[j][idx].mean(axis=1)
        start = stop
    tail = (1.0 - ci) / 2.0
    out["mean_ci_low"], out["mean_ci_high"] = np.quantile(boot_mean, [tail, 1.0 - tail], axis=0)
    out["share_ci_low"], out["share_ci_high"] = np.quantile(boot_share, [tail, 1.0 - tail], axis=0)
    return out
