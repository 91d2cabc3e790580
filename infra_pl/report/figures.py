"""Which figures the report shows, chosen from the shape of each table.

Why by shape and not by table name: callers may pass their own tables (another grouping, fewer
measurements); any long table with ``measurement``/``mean``/CI columns gets a bar chart, the
behaviour table gets the with/without chart, and wide tables are left as tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from infra_pl.report.plots import behaviour_bars, grouped_bars, score_distributions, token_class_bars

__all__ = ["ReportFigure", "report_figures"]

_LONG = {"measurement", "mean", "mean_ci_low", "mean_ci_high"}


@dataclass
class ReportFigure:
    """A figure with a file-safe name and a caption that says how to read it."""

    name: str
    caption: str
    figure: Figure


def _key_columns(table: pd.DataFrame) -> list[str]:
    columns = list(table.columns)
    return columns[: columns.index("measurement")]


def _arrow(key: tuple) -> str:
    return f"{key[0]}\u2192{key[1]}"


def report_figures(instance_df: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> list[ReportFigure]:
    """Score distributions plus one chart per summary table (see module doc)."""
    figures = [ReportFigure(
        "score_distributions",
        "Distribution of instance influence scores by training domain on a symmetric-log axis, one panel "
        "per measurement, the top proponents shaded (paper Figs. 2 and 8). Right of zero: examples that raise f.",
        score_distributions(instance_df),
    )]
    for name, table in tables.items():
        if table is None or table.empty:
            continue
        columns = set(table.columns)
        if {"token_class", "share_top"} <= columns:
            figures.append(ReportFigure(
                f"bars_{name}",
                "Share of each token class among each example's top 5% tokens and of total positive token "
                "influence, math vs code training traces (paper Fig. 7, Finding 4); ticks: share of all tokens; "
                "error bars: bootstrap CI resampling examples.",
                token_class_bars(table),
            ))
        elif {"removed", "mean_removal", "mean_removal_ci_low"} <= columns:
            figures.append(ReportFigure(
                f"bars_{name}",
                "Mean S(z) − S(z without all sentences of a behaviour), one re-scored counterfactual per "
                "example, over the top examples that show it (paper Table 2, left). Above zero: the behaviour's "
                "sentences carry positive influence. Error bars: bootstrap CI.",
                grouped_bars(table, x="removed", value="mean_removal", low="mean_removal_ci_low",
                             high="mean_removal_ci_high", ylabel="mean removal score",
                             title="influence carried by each behaviour (joint removal)"),
            ))
        elif {"behaviour", "mean_with", "mean_without"} <= columns:
            figures.append(ReportFigure(
                f"bars_{name}",
                "Mean instance score of training examples with vs without each behaviour, per "
                "measurement, with bootstrap CIs (paper Fig. 6, right).",
                behaviour_bars(table),
            ))
        elif _LONG <= columns:
            keys = _key_columns(table)
            if not keys:
                continue
            if keys == ["domain", "difficulty"]:
                fig = grouped_bars(table, x="difficulty", series=["domain", "measurement"], series_label=_arrow, sort_x=True,
                                   title="mean score by difficulty (training domain \u2192 measurement)")
                caption = ("Mean influence score per difficulty level; 'math\u2192code' = math training "
                           "examples measured on code (paper Figs. 3 right and 5 left). Error bars: bootstrap CI.")
            elif keys == ["behaviour"]:
                fig = grouped_bars(table, x="behaviour", ylabel="mean sentence removal score",
                                   title="sentence removal score (Eq. 7) by behaviour label")
                caption = ("Mean removal score S(z) \u2212 S(z without the sentence) of sentences per behaviour "
                           "label, over the examples the sentence pass scored (paper Table 2). Error bars: bootstrap CI.")
            else:
                joined = " \u00b7 ".join(keys)
                fig = grouped_bars(table, x=keys, title=f"mean score by {joined}")
                caption = (f"Mean instance influence score by {', '.join(keys)}, per measurement "
                           "(paper Fig. 3). Error bars: bootstrap CI of the mean.")
            figures.append(ReportFigure(f"bars_{name}", caption, fig))
    return figures
