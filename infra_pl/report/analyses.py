"""The report's analyses beyond the grouped tables: token classes (Finding 4), behaviour removal
(Table 2) and robustness to the D_correct draw (Appendix C, Table 3).

Each needs an input that only some runs have (token scores, sentence-pass removals, per-query
scores); :func:`extra_tables` computes the ones whose input exists and names the ones it could not
in ``attrs["not_measured"]``, so the report can say why a section is missing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from infra_pl.report.removal import behaviour_removal_summary
from infra_pl.report.robustness import dcorrect_robustness, robustness_wide
from infra_pl.report.token_classes import token_class_table

__all__ = ["extra_tables", "not_measured"]


def extra_tables(
    instance_df: pd.DataFrame,
    token_df: pd.DataFrame | None = None,
    removal_df: pd.DataFrame | None = None,
    pairwise_df: pd.DataFrame | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, pd.DataFrame]:
    """``token_classes``, ``behaviour_removal``, ``dcorrect_robustness`` and ``dcorrect_table3``
    where their inputs exist (see :func:`not_measured` for the sentences naming the others)."""
    tables: dict[str, pd.DataFrame] = {}
    if token_df is not None and len(token_df):
        tables["token_classes"] = token_class_table(token_df, instance_df, n_boot=n_boot, seed=seed, ci=ci)
    if removal_df is not None and len(removal_df):
        tables["behaviour_removal"] = behaviour_removal_summary(removal_df, n_boot=n_boot, seed=seed, ci=ci)
    if pairwise_df is not None and len(pairwise_df):
        robustness = dcorrect_robustness(pairwise_df, seed=seed)
        tables["dcorrect_robustness"] = robustness
        tables["dcorrect_table3"] = robustness_wide(robustness)
    return tables


def not_measured(tables: dict[str, Any]) -> list[str]:
    """Sentences naming the analyses a run could not make, and what to switch on for them."""
    reasons = {
        "token_classes": "Finding 4 (token classes) needs token scores: InfluenceScores token_top_k > 0.",
        "behaviour_removal": "Table 2 (behaviour removal) needs sentence scores of tagged traces: "
                             "InfluenceScores sentence_top_k > 0 and a tagger.",
        "dcorrect_robustness": "Robustness to the D_correct draw (Appendix C) needs per-query scores: "
                               "InfluenceScores pairwise: true.",
    }
    return [text for name, text in reasons.items() if name not in tables]
