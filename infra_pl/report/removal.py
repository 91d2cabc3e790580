"""Paper Table 2 (left): the influence of the top examples with and without a behaviour's sentences.

Input: ``behaviour_removal.parquet`` from ``InfluenceScores`` (one row per example, measurement
and removed set: ``score_full`` = S(z), ``score_without`` = S(z without all sentences of the set),
re-tokenised and re-scored once; ``score_removal_joint`` = their difference;
``score_removal_additive`` = the sum of the single-sentence removals, an approximation).

A positive mean removal says the behaviour's sentences carry positive influence: taking them out
of the training example would lower how much it helps the measurement. Only the examples that
show the behaviour (among the top examples the sentence pass scored) enter its row, so the
population is stated with every number (``n_examples``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from infra_pl.report.bootstrap import describe
from infra_pl.report.validate import require_columns, require_finite

__all__ = ["REMOVAL_COLUMNS", "behaviour_removal_summary"]

REMOVAL_COLUMNS = ("id", "measurement", "removed", "n_sentences", "score_full", "score_without",
                   "score_removal_joint", "score_removal_additive")
_WHAT = "behaviour removal scores"


def behaviour_removal_summary(removal_df: pd.DataFrame, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Per measurement and removed set: mean S(z), mean S(z without the set), the joint removal with
    its CI and share positive, and the additive approximation beside it (labelled ``_additive``)."""
    require_columns(removal_df, REMOVAL_COLUMNS, _WHAT)
    require_finite(removal_df, ["score_full", "score_without", "score_removal_joint", "score_removal_additive"], _WHAT)
    rows: list[dict[str, Any]] = []
    for (measurement, removed), part in removal_df.groupby(["measurement", "removed"], sort=False):
        values = part[["score_removal_joint", "score_removal_additive"]].to_numpy(dtype=float)
        stats = describe(values, n_boot=n_boot, seed=seed, ci=ci)
        rows.append({
            "measurement": measurement,
            "removed": removed,
            "n_examples": int(part["id"].nunique()),
            "mean_sentences_removed": float(part["n_sentences"].mean()),
            "mean_score_full": float(part["score_full"].mean()),
            "mean_score_without": float(part["score_without"].mean()),
            "mean_removal": stats["mean"][0],
            "mean_removal_ci_low": stats["mean_ci_low"][0],
            "mean_removal_ci_high": stats["mean_ci_high"][0],
            "share_positive": stats["share_positive"][0],
            "mean_removal_additive": stats["mean"][1],
            "additive_minus_joint": float(np.mean(values[:, 1] - values[:, 0])),
        })
    return pd.DataFrame(rows)
