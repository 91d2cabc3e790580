"""The linear datamodeling score (LDS), its bootstrap interval, and small-sample t intervals.

LDS (Park et al., 2023) asks whether attribution scores predict what retraining does: for M
random training subsets S_j, the prediction is g(S_j) = Σ_{z∈S_j} score(z) and the truth is the
measurement f of the model retrained on S_j; LDS is the Spearman rank correlation between the two
over the M retrains, computed per measurement and averaged over measurements. The interval comes
from resampling the retrains (the expensive, noisy part) with replacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 along the last axis, ties sharing their average rank (as Spearman needs).

    Ties matter here: a bootstrap resample repeats retrains, which repeats values exactly.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="mergesort")
    s = np.take_along_axis(values, order, axis=-1)
    position = np.broadcast_to(np.arange(n), s.shape)
    new_run = np.ones(s.shape, dtype=bool)
    new_run[..., 1:] = s[..., 1:] != s[..., :-1]
    run_end = np.ones(s.shape, dtype=bool)
    run_end[..., :-1] = new_run[..., 1:]
    first = np.maximum.accumulate(np.where(new_run, position, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(run_end, position, n), -1), axis=-1), -1)
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, (first + last) / 2.0, axis=-1)
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(-1) / np.where(denominator > 0, denominator, 1.0), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis (broadcast over leading axes); NaN if one is constant."""
    return _pearson(average_ranks(a), average_ranks(b))


def subset_predictions(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """g(S_j) = Σ_{z∈S_j} score(z): [Q, N] scores and [M, N] 0/1 subset masks -> [Q, M]."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    masks = np.asarray(masks, dtype=np.float64)
    if scores.shape[-1] != masks.shape[-1]:
        raise ValueError(f"scores cover {scores.shape[-1]} training examples, subset masks {masks.shape[-1]}")
    return scores @ masks.T


def lds_per_measurement(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Spearman over retrains for each measurement: [Q, M] predictions and truths -> [Q]."""
    predicted, measured = np.atleast_2d(predicted), np.atleast_2d(measured)
    if predicted.shape != measured.shape:
        raise ValueError(f"predictions {predicted.shape} and measurements {measured.shape} differ in shape")
    if predicted.shape[1] < 3:
        raise ValueError(f"LDS needs at least 3 retrains, got {predicted.shape[1]}")
    return spearman(predicted, measured)


@dataclass
class Interval:
    """A point estimate with a 95% interval (NaN bounds when it cannot be formed)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def format(self, digits: int = 3) -> str:
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_picks(m: int, n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """[n_bootstrap, m] retrain indices drawn with replacement; share them to pair two methods."""
    return np.random.default_rng(seed).integers(0, m, size=(n_bootstrap, m))


def lds_draws(predicted: np.ndarray, measured: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Mean-over-measurements LDS for each bootstrap resample of the retrains (NaN where undefined).

    Why the ranks are taken once, over all M retrains, and each resample computes the Pearson
    correlation of those fixed ranks (which is Spearman's ρ on the full sample): re-ranking inside
    a resample turns every repeated retrain into a tie, and Spearman over tied duplicates is biased
    low -- by about one standard error at M = 20, enough to push the interval below the point
    estimate when many measurements are averaged. With fixed ranks a repeated retrain only
    re-weights its point, as the bootstrap intends.
    """
    ranks_p, ranks_m = average_ranks(np.atleast_2d(predicted)), average_ranks(np.atleast_2d(measured))
    draws = np.empty(picks.shape[0])
    for b, pick in enumerate(picks):
        values = _pearson(ranks_p[:, pick], ranks_m[:, pick])
        draws[b] = np.nanmean(values) if np.isfinite(values).any() else np.nan
    return draws


def percentile_interval(point: float, draws: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval around ``point``; NaN bounds if most draws were undefined."""
    finite = draws[np.isfinite(draws)]
    if finite.size < max(10, draws.size // 2):
        return Interval(point, float("nan"), float("nan"))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(point, float(low), float(high))


def lds(
    predicted: np.ndarray, measured: np.ndarray, n_bootstrap: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[Interval, np.ndarray]:
    """Mean over measurements of the per-measurement LDS, with a percentile bootstrap interval.

    ``predicted`` and ``measured`` are [Q, M] (Q measurements, M retrains). Each bootstrap draw
    resamples the M retrains with replacement (the same draw for every measurement, since one
    retrain yields all Q measurements) and recomputes the mean Spearman. Measurements whose
    Spearman is undefined (constant values) are left out of the mean. Returns the interval and
    the per-measurement values. See :func:`lds_draws` for how a resample is scored.
    """
    predicted, measured = np.atleast_2d(predicted), np.atleast_2d(measured)
    per_measurement = lds_per_measurement(predicted, measured)
    point = float(np.nanmean(per_measurement)) if np.isfinite(per_measurement).any() else float("nan")
    draws = lds_draws(predicted, measured, bootstrap_picks(predicted.shape[1], n_bootstrap, seed))
    return percentile_interval(point, draws, level), per_measurement


def student_t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom (bisection on a Simpson-integrated CDF).

    Why not scipy: it is not a dependency of the package, and this is only needed for intervals
    over a handful of training seeds.
    """
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, dof)
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf_above_half(x: float, intervals: int = 1000) -> float:  # ∫_0^x density, Simpson's rule
        t = np.linspace(0.0, x, intervals + 1)
        density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(t * t / dof))
        weights = np.ones(intervals + 1)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        return float((weights * density).sum() * (x / intervals) / 3)

    target = p - 0.5
    low, high = 0.0, 1.0
    while cdf_above_half(high) < target:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        if cdf_above_half(mid) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean with a Student-t interval over a few values (e.g. training seeds); NaN bounds for n < 2."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, float("nan"), float("nan"))
    half = student_t_quantile(0.5 + level / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half)
