"""Exact scores where they matter when a measurement is scored from the training-gradient index.

Why: a rank-k index keeps only the top eigen-block Q_S,kᵀ G Q_A,k of every training gradient. The
part of a score it drops is large but correlated with the part it keeps: on the benchmark model
the kept part was 2–5× smaller in magnitude than the exact score while correlating 0.93–0.99 with
it (``benchmarks/bench_index.py``). So raw index scores are on another scale than instance-pass
scores, and how well they rank examples depends on the model and the measurement, which the user
cannot see. Three cheap remedies, each an instance pass over a few examples only:

* a seeded **check sample** scored exactly measures the agreement (Pearson, Spearman) for this
  model and this measurement, at |sample|/N of an epoch;
* a least-squares line exact ≈ a·index + b fitted on that sample **calibrates** every index score
  onto the exact scale, so sums by domain or behaviour mean the same as after an instance pass;
* the **extremes** (the top and bottom K examples of each measurement by index score) are scored
  exactly, so the examples a ranking shows first carry exact scores.

The functions here are plain numpy; :class:`infra_pl.influence.driver.ScoreRun` runs the passes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

POOR_AGREEMENT = 0.9  # below this Pearson on the check sample, the run says so loudly


@dataclass(frozen=True)
class IndexAgreement:
    """How one measurement's index scores compare with exact scores on the check sample."""

    measurement: str
    examples: int
    pearson: float
    spearman: float
    slope: float  # exact ≈ slope · index + intercept (least squares on the check sample)
    intercept: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        return (f"'{self.measurement}': Pearson {self.pearson:.3f}, Spearman {self.spearman:.3f} with exact scores on "
                f"{self.examples} sampled examples; index scores calibrated as exact ≈ {self.slope:.4g}·index "
                f"{'+' if self.intercept >= 0 else '−'} {abs(self.intercept):.3g}")


def extreme_rows(index_scores: np.ndarray, top: int) -> list[int]:
    """Rows of the ``top`` highest and ``top`` lowest index scores of every measurement (columns), sorted."""
    if top <= 0 or index_scores.size == 0:
        return []
    rows: set[int] = set()
    for column in index_scores.T:
        order = np.argsort(column, kind="stable")
        rows.update(order[:top].tolist())
        rows.update(order[-top:].tolist())
    return sorted(int(r) for r in rows)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's correlation."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def fit_agreement(name: str, index_scores: np.ndarray, exact_scores: np.ndarray) -> IndexAgreement:
    """Agreement and calibration line of one measurement from its check sample (1-D arrays, same rows)."""
    index_scores = np.asarray(index_scores, dtype=np.float64)
    exact_scores = np.asarray(exact_scores, dtype=np.float64)
    if len(index_scores) != len(exact_scores):
        raise ValueError(f"{len(index_scores)} index scores for {len(exact_scores)} exact scores")
    if len(index_scores) < 3:
        raise ValueError(f"the index check of '{name}' needs at least 3 examples, got {len(index_scores)} "
                         "(raise index_check_examples, or set it to 0 for raw index scores)")
    if not (np.isfinite(index_scores).all() and np.isfinite(exact_scores).all()):
        raise ValueError(f"the index check of '{name}' met a non-finite score (index or exact)")
    spread = float(index_scores.var())
    if spread > 0:
        slope = float(((index_scores - index_scores.mean()) * (exact_scores - exact_scores.mean())).mean() / spread)
    else:
        slope = 0.0
    intercept = float(exact_scores.mean() - slope * index_scores.mean())
    return IndexAgreement(name, len(index_scores), _pearson(index_scores, exact_scores),
                          _pearson(_ranks(index_scores), _ranks(exact_scores)), slope, intercept)


def combine(index_scores: np.ndarray, exact: dict[int, np.ndarray], agreements: Sequence[IndexAgreement] | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """[N, M] scores: exact where a row was scored exactly, else the (calibrated, when ``agreements``) index
    score; and the [N] mask of exact rows."""
    out = np.array(index_scores, dtype=np.float64, copy=True)
    if agreements:
        slopes = np.array([a.slope for a in agreements])
        intercepts = np.array([a.intercept for a in agreements])
        out = out * slopes + intercepts
    mask = np.zeros(len(out), dtype=bool)
    for row, values in exact.items():
        out[row] = values
        mask[row] = True
    return out, mask
