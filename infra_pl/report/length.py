"""Length-fair comparisons of influence scores: raw sums, per-token means, length-adjusted differences.

Why: an instance score S(z) is a sum over the target tokens of z (the training gradient of a
sequence is the sum of its token gradients, paper Eq. 8), so long examples have large |S(z)|. Long
reasoning traces are also the ones that show behaviours such as exploration, and hard problems
get long traces. A raw-sum comparison (with vs without a behaviour, hard vs easy, in-domain vs
cross-domain) can therefore be a comparison of lengths. The paper reports raw sums and so do the
report's tables; every comparison here adds two length-fair views with intervals:

* **per token**: the mean over examples of S(z) / n_target_tokens(z), i.e. "influence per token
  trained on". Examples with no (or an unknown) token count are left out and counted.
* **length-adjusted**: examples are put in length strata (quantiles of ``n_target_tokens``, by
  default quintiles, within domain where the comparison allows it); within a stratum the two
  sides' mean scores are compared after removing the part explained by their remaining length
  difference (pooled within-stratum slope of S on the token count, an analysis of covariance); the
  stratum differences are averaged with weights = stratum size. Strata where a side has fewer
  than :data:`MIN_CELL` examples carry no comparison and are dropped; ``adjusted_coverage`` is the
  share of the compared examples (with a token count) in strata that were used. Stratification handles a non-linear length effect across strata, the
  slope the residual length difference inside a (wide) stratum such as the longest quintile: in
  a simulation where S(z) is length times noise and a behaviour is more common in long traces,
  plain quintile subclassification still kept ~13% of the raw (purely length-made) difference,
  enough to look significant on 17k examples; with the within-stratum slope the bias vanished.

A comparison is flagged ``length_driven`` when the raw difference's interval excludes 0 but the
length-adjusted one does not exclude 0 on the same side: it includes 0, flips sign, or cannot be
computed because no length stratum holds both sides (the two groups never have similar lengths,
or there are too few examples to tell). The flag is missing (NA) when the compared examples have
no token counts, so nothing can be said.

Intervals: the raw and per-token differences come from one two-sample bootstrap
(:func:`infra_pl.report.bootstrap.describe_difference`: each side resampled independently); the
adjusted difference resamples each (stratum, side) cell independently from
``default_rng([seed, 3])``, cells in a fixed order, so it is reproducible given the seed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from infra_pl.report.bootstrap import _check, describe_difference, percentile_interval, resampled_means
from infra_pl.report.validate import ReportInputError

__all__ = [
    "COMPARISON_STATISTICS",
    "LENGTH_COLUMN",
    "adjusted_difference",
    "compare",
    "length_driven",
    "length_strata",
    "per_token",
    "token_counts",
]

LENGTH_COLUMN = "n_target_tokens"
N_STRATA = 5
MIN_CELL = 2  # examples each side needs in a stratum: one example has no resampling spread

# What :func:`compare` returns, per measurement (sides are called a and b here; tables rename them).
COMPARISON_STATISTICS = (
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "mean_per_token_a",
    "mean_per_token_b",
    "difference_per_token",
    "difference_per_token_ci_low",
    "difference_per_token_ci_high",
    "difference_length_adjusted",
    "difference_length_adjusted_ci_low",
    "difference_length_adjusted_ci_high",
    "adjusted_coverage",
    "n_no_tokens",
    "length_driven",
)


def token_counts(df: pd.DataFrame, column: str = LENGTH_COLUMN, what: str = "instance scores") -> np.ndarray | None:
    """The token counts of ``df[column]`` as floats (NaN where unknown), or ``None`` without the column.

    Refuses a non-numeric column, negative or infinite counts: those are bugs upstream, not
    examples to average around. Zero and missing counts are allowed (they are left out of the
    length-fair statistics and counted).
    """
    if column not in df.columns:
        return None
    series = df[column]
    if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
        raise ReportInputError(f"{what}: column '{column}' must be numeric token counts, got dtype {series.dtype}")
    values = series.to_numpy(dtype=float, na_value=np.nan)
    bad = np.isinf(values) | (values < 0)
    if bad.any():
        raise ReportInputError(f"{what}: {int(bad.sum())} of {len(df)} row(s) have a negative or infinite '{column}'")
    return values


def _has_tokens(tokens: np.ndarray | None, n: int) -> np.ndarray:
    if tokens is None:
        return np.zeros(n, dtype=bool)
    return np.isfinite(tokens) & (tokens > 0)


def per_token(values: np.ndarray, tokens: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(values / tokens, valid)``: per-token scores (shape of ``values``; NaN where the example has
    no positive token count) and the boolean row mask of examples that have one."""
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    valid = _has_tokens(tokens, n)
    divisor = np.where(valid, tokens if tokens is not None else 1.0, 1.0)
    if values.ndim == 2:
        divisor = divisor[:, None]
    ratio = values / divisor
    mask = valid[:, None] if values.ndim == 2 else valid
    return np.where(mask, ratio, np.nan), valid


def length_strata(tokens: np.ndarray | None, n_strata: int = N_STRATA, groups: Sequence | np.ndarray | None = None) -> np.ndarray:
    """Stratum code per row (``-1`` where the row has no positive token count).

    Strata are ``n_strata`` quantile bins of the token count, computed separately within each value
    of ``groups`` (e.g. the training domain; ``None``/NaN keys form their own group). Tied lengths
    always share a bin (bins are cut at quantile values, so duplicate cut points give fewer,
    larger bins).
    """
    if int(n_strata) != n_strata or n_strata < 1:
        raise ValueError(f"n_strata must be a positive integer, got {n_strata!r}")
    n = 0 if tokens is None else len(tokens)
    codes = np.full(n, -1, dtype=np.int64)
    if tokens is None or n == 0:
        return codes
    valid = _has_tokens(tokens, n)
    if groups is None:
        group_codes = np.zeros(n, dtype=np.int64)
    else:
        group_codes = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), use_na_sentinel=False)[0].astype(np.int64)
    inner = np.linspace(0.0, 1.0, int(n_strata) + 1)[1:-1]
    for g in np.unique(group_codes[valid]):
        rows = valid & (group_codes == g)
        lengths = tokens[rows]
        edges = np.unique(np.quantile(lengths, inner)) if len(inner) else np.array([])
        codes[rows] = g * int(n_strata) + np.searchsorted(edges, lengths, side="right")
    return codes


def _moments(means: np.ndarray, y0: np.ndarray, x0: float, n: int, m: int) -> tuple[np.ndarray, ...]:
    """Mean score, mean length, Sxx and Sxy of a cell from (resampled) means of its centred columns
    ``[y - y0 (m), x - x0, (x - x0)^2, (x - x0)(y - y0) (m)]``; rows of ``means`` are resamples."""
    my, mx, mxx, mxy = means[:, :m], means[:, m], means[:, m + 1], means[:, m + 2:]
    return y0 + my, x0 + mx, n * (mxx - mx * mx), n * (mxy - mx[:, None] * my)


def _stratum_difference(parts: list[tuple[np.ndarray, ...]], scale: float) -> np.ndarray:
    """Within-stratum difference A - B of mean scores, minus the pooled within-cell slope of score
    on length times the two cells' mean-length difference (one row per resample)."""
    (ya, xa, sxx_a, sxy_a), (yb, xb, sxx_b, sxy_b) = parts
    sxx, sxy = sxx_a + sxx_b, sxy_a + sxy_b
    flat = sxx <= 1e-12 * scale  # no length spread left in the stratum: no slope to remove
    slope = np.where(flat[:, None], 0.0, sxy / np.where(flat, 1.0, sxx)[:, None])
    return (ya - yb) - slope * (xa - xb)[:, None]


def adjusted_difference(values: np.ndarray, side_a: np.ndarray, tokens: np.ndarray | None, strata: np.ndarray,
                        n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict[str, np.ndarray | float]:
    """Length-adjusted difference of mean scores, side A minus side B (see the module doc).

    ``values`` ``(n, m)`` scores, ``side_a`` ``(n,)`` booleans (False = side B), ``tokens`` the
    token counts, ``strata`` codes from :func:`length_strata` (rows with code -1 are ignored).
    Returns ``difference``, ``ci_low``, ``ci_high`` (arrays of length m) and ``coverage`` (float).
    """
    _check(n_boot, ci)
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    side_a = np.asarray(side_a, dtype=bool)
    strata = np.asarray(strata)
    out: dict[str, np.ndarray | float] = {"difference": np.full(m, np.nan), "ci_low": np.full(m, np.nan),
                                          "ci_high": np.full(m, np.nan), "coverage": np.nan}
    if tokens is None or n == 0:
        return out
    used_rows = strata >= 0
    if not used_rows.any():
        return out
    x_all = np.asarray(tokens, dtype=float)
    rng = np.random.default_rng([seed, 3])
    point_num = np.zeros(m)
    boot_num = np.zeros((n_boot, m))
    weight = 0
    for code in np.unique(strata[used_rows]):
        in_stratum = strata == code
        cells = [in_stratum & side_a, in_stratum & ~side_a]
        if cells[0].sum() < MIN_CELL or cells[1].sum() < MIN_CELL:
            continue
        x_scale = float(np.mean(x_all[in_stratum])) ** 2 + 1.0
        point_parts, boot_parts = [], []
        for cell in cells:
            y, x = values[cell], x_all[cell]
            y0, x0 = y.mean(axis=0), float(x.mean())
            yc, xc = y - y0, x - x0
            columns = np.column_stack([yc, xc, xc * xc, xc[:, None] * yc])
            point_parts.append(_moments(columns.mean(axis=0)[None, :], y0, x0, len(y), m))
            boot_parts.append(_moments(resampled_means(columns, n_boot, rng), y0, x0, len(y), m))
        size = int(in_stratum.sum())
        point_num += size * _stratum_difference(point_parts, size * x_scale)[0]
        boot_num += size * _stratum_difference(boot_parts, size * x_scale)
        weight += size
    if weight == 0:
        out["coverage"] = 0.0
        return out
    out["difference"] = point_num / weight
    out["ci_low"], out["ci_high"] = percentile_interval(boot_num / weight, ci)
    out["coverage"] = weight / int(used_rows.sum())
    return out


def length_driven(raw_low: np.ndarray, raw_high: np.ndarray, adjusted_low: np.ndarray, adjusted_high: np.ndarray,
                  known: bool | np.ndarray = True) -> pd.arrays.BooleanArray:
    """True where the raw interval excludes 0 and the length-adjusted one does not exclude 0 on the
    same side (NaN adjusted bounds count as "does not"); NA where ``known`` is False (no lengths)."""
    raw_low, raw_high = np.asarray(raw_low, dtype=float), np.asarray(raw_high, dtype=float)
    adjusted_low, adjusted_high = np.asarray(adjusted_low, dtype=float), np.asarray(adjusted_high, dtype=float)
    positive, negative = raw_low > 0, raw_high < 0
    holds = (positive & (adjusted_low > 0)) | (negative & (adjusted_high < 0))
    flag = pd.array((positive | negative) & ~holds, dtype="boolean")
    flag[~np.broadcast_to(np.asarray(known, dtype=bool), flag.shape)] = pd.NA
    return flag


def compare(values: np.ndarray, side_a: np.ndarray, tokens: np.ndarray | None, strata: np.ndarray | None,
            n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict[str, np.ndarray]:
    """Side A vs side B for every column of ``values`` (``(n, m)``): raw, per-token and
    length-adjusted differences with intervals and the ``length_driven`` flag.

    Returns one array of length m per name in :data:`COMPARISON_STATISTICS`. ``strata`` (codes from
    :func:`length_strata` over the compared rows) may be ``None`` when ``tokens`` is.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    n, m = values.shape
    side_a = np.asarray(side_a, dtype=bool)
    side_b = ~side_a
    scores_pt, valid = per_token(values, tokens)
    stacked = np.concatenate([values, np.where(np.isnan(scores_pt), 0.0, scores_pt)], axis=1)
    mask = np.concatenate([np.ones((n, m), dtype=bool), np.repeat(valid[:, None], m, axis=1)], axis=1)
    diff = describe_difference(stacked[side_a], stacked[side_b], n_boot=n_boot, seed=seed, ci=ci,
                               valid_a=mask[side_a], valid_b=mask[side_b])

    def mean_of(rows: np.ndarray, columns: np.ndarray, use: np.ndarray) -> np.ndarray:
        use = use & rows
        return columns[use].mean(axis=0) if use.any() else np.full(m, np.nan)

    out: dict[str, np.ndarray] = {
        "n_a": np.full(m, int(side_a.sum()), dtype=np.int64),
        "n_b": np.full(m, int(side_b.sum()), dtype=np.int64),
        "mean_a": mean_of(side_a, values, np.ones(n, dtype=bool)),
        "mean_b": mean_of(side_b, values, np.ones(n, dtype=bool)),
        "difference": diff["difference"][:m],
        "difference_ci_low": diff["ci_low"][:m],
        "difference_ci_high": diff["ci_high"][:m],
        "mean_per_token_a": mean_of(side_a, scores_pt, valid),
        "mean_per_token_b": mean_of(side_b, scores_pt, valid),
        "difference_per_token": diff["difference"][m:],
        "difference_per_token_ci_low": diff["ci_low"][m:],
        "difference_per_token_ci_high": diff["ci_high"][m:],
        "n_no_tokens": np.full(m, int((~valid).sum()), dtype=np.int64),
    }
    known = tokens is not None and bool(valid.any())
    if known and strata is not None:
        adjusted = adjusted_difference(values, side_a, tokens, strata, n_boot=n_boot, seed=seed, ci=ci)
    else:
        adjusted = {"difference": np.full(m, np.nan), "ci_low": np.full(m, np.nan), "ci_high": np.full(m, np.nan),
                    "coverage": np.nan}
    out["difference_length_adjusted"] = np.asarray(adjusted["difference"])
    out["difference_length_adjusted_ci_low"] = np.asarray(adjusted["ci_low"])
    out["difference_length_adjusted_ci_high"] = np.asarray(adjusted["ci_high"])
    out["adjusted_coverage"] = np.full(m, adjusted["coverage"], dtype=float)
    out["length_driven"] = length_driven(out["difference_ci_low"], out["difference_ci_high"],
                                         out["difference_length_adjusted_ci_low"],
                                         out["difference_length_adjusted_ci_high"], known=known)
    return out
