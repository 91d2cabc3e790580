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
draws.

Speed: a resample's mean of every column at once is ``counts @ values / n``, where ``counts`` holds
how often each row was drawn (built with one ``np.add.at`` per block). One pass over the indices
then serves any number of columns (scores, positive indicators, per-token scores, validity masks),
instead of one gather per column; 17k examples x 2000 resamples take well under a second per
group table.

Differences (:func:`describe_difference`): a with-vs-without or A-vs-B comparison resamples each
side independently, side A from ``default_rng([seed, 1])`` and side B from ``default_rng([seed,
2])`` (separate streams, so two sides of equal size never share their draws), and takes the
percentile interval of ``mean(A*) - mean(B*)``.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np

__all__ = [
    "MAX_ELEMENTS",
    "STATISTICS",
    "describe",
    "describe_difference",
    "percentile_interval",
    "resample_blocks",
    "resampled_means",
]

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


def resample_blocks(n: int, n_boot: int, rng: np.random.Generator, max_elements: int | None = None) -> Iterator[np.ndarray]:
    """Yield index arrays of shape ``(rows, n)`` whose rows add up to ``n_boot`` resamples.

    One block (the plain ``rng.integers(0, n, size=(n_boot, n), dtype=np.int32)``) whenever it fits
    in ``max_elements`` (default :data:`MAX_ELEMENTS`, read at call time); the tests rely on that to
    compare against a textbook implementation.
    """
    max_elements = MAX_ELEMENTS if max_elements is None else max_elements
    dtype = np.int32 if n < 2**31 else np.int64
    rows = max(1, max_elements // max(n, 1))
    done = 0
    while done < n_boot:
        take = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(take, n), dtype=dtype)
        done += take


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``(rows, n)`` float matrix: how often each of the n rows appears in each resample."""
    rows = idx.shape[0]
    total = rows * n
    dtype = np.int32 if total < 2**31 else np.int64
    flat = idx.astype(dtype, copy=False) + (np.arange(rows, dtype=dtype) * n)[:, None]
    counts = np.zeros(total)
    np.add.at(counts, flat.ravel(), 1.0)
    return counts.reshape(rows, n)


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[:, None] if values.ndim == 1 else values


def _valid_mask(valid: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if valid is None:
        return None
    mask = np.asarray(valid, dtype=bool)
    if mask.ndim == 1:
        mask = mask[:, None]
    return np.broadcast_to(mask, shape)


def resampled_means(values: np.ndarray, n_boot: int, rng: np.random.Generator, valid: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap distribution ``(n_boot, k)`` of the column means of ``values`` (shape ``(n, k)``).

    Each resample draws n rows with replacement (:func:`resample_blocks`), shared by all columns.
    ``valid`` (shape ``(n,)`` or ``(n, k)``, optional) marks the entries that count: a column's
    resampled mean is then the mean over the drawn rows that are valid for it (a ratio mean, so the
    number of valid rows varies between resamples, as it would in a new sample); a resample without
    any valid row gives NaN. Entries outside ``valid`` may hold anything, NaN included.
    """
    values = _as_2d(values)
    n, k = values.shape
    mask = _valid_mask(valid, (n, k))
    out = np.full((n_boot, k), np.nan)
    if n == 0:
        return out
    if mask is None:
        data, weights = values, None
    else:
        data = np.where(mask, values, 0.0)
        weights = mask.astype(float)
    start = 0
    for idx in resample_blocks(n, n_boot, rng):
        stop = start + idx.shape[0]
        counts = _counts(idx, n)
        sums = counts @ data
        if weights is None:
            out[start:stop] = sums / n
        else:
            used = counts @ weights
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start:stop] = np.where(used > 0, sums / np.where(used > 0, used, 1.0), np.nan)
        start = stop
    return out


def percentile_interval(boot: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval (numpy's default linear quantile) of each column of ``boot``, ignoring
    NaN resamples; a column without any finite resample gives NaN."""
    tail = (1.0 - ci) / 2.0
    boot = _as_2d(boot)
    if not np.isnan(boot).any():
        low, high = np.quantile(boot, [tail, 1.0 - tail], axis=0)
        return low, high
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN, said in the doc
        low, high = np.nanquantile(boot, [tail, 1.0 - tail], axis=0)
    return low, high


def describe(values: np.ndarray, n_boot: int = 2000, seed: int = 0, ci: float = 0.95,
             valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Statistics of each column of ``values`` (shape ``(n, m)``): one array of length m per name in
    :data:`STATISTICS`.

    ``share_positive`` is the fraction of values ``> 0`` (positively influential examples, the
    population the paper focuses on). Intervals are percentile intervals (numpy's default linear
    quantile) of the bootstrap distribution of the mean and of the share. An empty group gives
    ``n = 0`` and NaN elsewhere; a single value gives a degenerate interval at that value.

    ``valid`` (optional, ``(n,)`` or ``(n, m)`` booleans) restricts a column to its valid rows (e.g.
    per-token scores of examples that have target tokens): ``n`` counts them, and the resamples draw
    from all n rows and average the valid ones (:func:`resampled_means`). All columns share the same
    draws, so adding a column never changes another column's statistics.
    """
    _check(n_boot, ci)
    values = _as_2d(values)
    n, m = values.shape
    mask = _valid_mask(valid, (n, m))
    out: dict[str, np.ndarray] = {name: np.full(m, np.nan) for name in STATISTICS}
    out["n"] = np.full(m, n, dtype=np.int64) if mask is None else mask.sum(axis=0).astype(np.int64)
    if n == 0:
        return out
    positive = (values > 0).astype(float)
    if mask is None:
        out["mean"] = values.mean(axis=0)
        out["median"] = np.median(values, axis=0)
        out["share_positive"] = positive.mean(axis=0)
    else:
        for j in range(m):
            column = values[mask[:, j], j]
            if len(column):
                out["mean"][j] = column.mean()
                out["median"][j] = np.median(column)
                out["share_positive"][j] = (column > 0).mean()

    rng = np.random.default_rng(seed)
    both_valid = None if mask is None else np.concatenate([mask, mask], axis=1)
    boot = resampled_means(np.concatenate([values, positive], axis=1), n_boot, rng, valid=both_valid)
    out["mean_ci_low"], out["mean_ci_high"] = percentile_interval(boot[:, :m], ci)
    out["share_ci_low"], out["share_ci_high"] = percentile_interval(boot[:, m:], ci)
    return out


def describe_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, ci: float = 0.95,
                        valid_a: np.ndarray | None = None, valid_b: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Difference of column means ``mean(a) - mean(b)`` with a two-sample percentile-bootstrap interval.

    ``a`` (``(n_a, m)``) and ``b`` (``(n_b, m)``) are resampled independently (side A from
    ``default_rng([seed, 1])``, side B from ``default_rng([seed, 2])``), as two separate samples
    should be. ``valid_a``/``valid_b`` restrict columns to valid rows as in :func:`describe`.
    Returns ``difference``, ``ci_low``, ``ci_high`` (arrays of length m); an empty side (or a
    column with no valid row on a side) gives NaN.
    """
    _check(n_boot, ci)
    a, b = _as_2d(a), _as_2d(b)
    m = a.shape[1]
    if b.shape[1] != m:
        raise ValueError(f"both sides need the same columns, got {a.shape[1]} and {m}")
    out = {key: np.full(m, np.nan) for key in ("difference", "ci_low", "ci_high")}
    if len(a) == 0 or len(b) == 0:
        return out
    mask_a, mask_b = _valid_mask(valid_a, a.shape), _valid_mask(valid_b, b.shape)

    def point(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        if mask is None:
            return values.mean(axis=0)
        used = mask.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(used > 0, np.where(mask, values, 0.0).sum(axis=0) / np.maximum(used, 1), np.nan)

    out["difference"] = point(a, mask_a) - point(b, mask_b)
    boot_a = resampled_means(a, n_boot, np.random.default_rng([seed, 1]), valid=mask_a)
    boot_b = resampled_means(b, n_boot, np.random.default_rng([seed, 2]), valid=mask_b)
    out["ci_low"], out["ci_high"] = percentile_interval(boot_a - boot_b, ci)
    return out
