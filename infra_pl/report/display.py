"""How the report shows a table: CIs folded into their value, only the columns a reader needs, and
one sentence saying what the table shows. The CSV/JSON files keep every column.

Why: the aggregate tables carry every statistic (27 columns for behaviours), which is right for a
script and unreadable in a report. A value with its interval reads as ``4.1 [2.0, 6.3]``.
"""

from __future__ import annotations

import pandas as pd

from infra_pl.report.findings import fmt

__all__ = ["TABLE_NOTES", "compact_table"]

TABLE_NOTES = {
    "domain_difficulty": "Mean influence of training examples per domain and difficulty level on each measurement "
                         "(raw sum over tokens and per token): Finding 2's detail.",
    "cross_domain": "Training domain (rows) \u00d7 measurement (columns): mean influence with CI; the diagonal is "
                    "in-domain, the rest is cross-domain transfer (Finding 1).",
    "by_domain": "The same as cross_domain in long form, with medians and the share of positive examples.",
    "by_category": "Mean influence per training category (MetaMathQA type, code task family, source).",
    "behaviours": "Training examples that show a behaviour vs those that do not (Fig. 6 right): raw, per-token and "
                  "length-adjusted differences with CIs; 'length-driven' marks a raw difference that adjustment removes.",
    "finding1_in_vs_cross_domain": "Finding 1 as a comparison: in-domain minus cross-domain mean influence, raw, per "
                                   "token and length-adjusted, with CIs.",
    "finding2_difficulty_contrast": "Finding 2 as a comparison: the hardest levels minus the easiest, per training "
                                    "domain and measurement, raw, per token and length-adjusted.",
    "sentence_behaviours": "Single-sentence removal scores (Eq. 7) per behaviour label, over the sentences of the top "
                           "examples; difference vs unlabelled sentences with CI.",
    "behaviour_removal": "Table 2 (left): S(z) minus S(z without all sentences of a behaviour), one re-scored "
                         "counterfactual per top example, beside the additive approximation.",
    "token_classes": "Finding 4: each token class's share of the top 5% tokens and of positive token influence, math vs "
                     "code training traces, with CIs.",
    "dcorrect_robustness": "Appendix C: rank correlation of the training ranking from n random D_correct items with the "
                           "ranking from all of them (several draws per n).",
    "dcorrect_table3": "Table 3 layout of the robustness table: mean Spearman correlation per measurement and n.",
}

# Columns no reader needs in the rendered view (they stay in the CSV/JSON).
_HIDDEN = ("n_no_tokens", "adjusted_coverage", "share_of_examples")


def _ci_columns(table: pd.DataFrame, column: str) -> tuple[str, str] | None:
    """The (low, high) CI columns of ``column`` under the aggregate tables' naming conventions."""
    candidates = [(f"{column}_ci_low", f"{column}_ci_high")]
    if column == "mean":
        candidates.append(("mean_ci_low", "mean_ci_high"))
    if column == "share_positive":
        candidates.append(("share_ci_low", "share_ci_high"))
    if column.endswith("_mean"):  # cross_domain: <m>_mean with <m>_ci_low
        candidates.append((f"{column[:-5]}_ci_low", f"{column[:-5]}_ci_high"))
    if column.endswith("_mean_per_token"):  # cross_domain: <m>_mean_per_token with <m>_per_token_ci_low
        stem = column[: -len("_mean_per_token")]
        candidates.append((f"{stem}_per_token_ci_low", f"{stem}_per_token_ci_high"))
    for low, high in candidates:
        if low in table.columns and high in table.columns:
            return low, high
    return None


def compact_table(table: pd.DataFrame) -> pd.DataFrame:
    """Strings ready to render: every value with a CI as ``value [low, high]``, CI columns folded in,
    bookkeeping columns hidden, numbers at about three significant digits."""
    out = pd.DataFrame(index=table.index)
    used: set[str] = set()
    for column in table.columns:
        if column in used or column in _HIDDEN:
            continue
        pair = _ci_columns(table, column)
        if pair is not None:
            low, high = pair
            used.update(pair)
            out[f"{column} [CI]"] = [f"{fmt(v)} [{fmt(a)}, {fmt(b)}]" for v, a, b in zip(table[column], table[low], table[high])]
        elif pd.api.types.is_float_dtype(table[column]):
            out[column] = [fmt(v) for v in table[column]]
        else:
            out[column] = table[column]
    return out.drop(columns=[c for c in out.columns if c in used], errors="ignore").reset_index(drop=True)
