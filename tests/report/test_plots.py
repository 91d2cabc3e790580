"""Figures: the right panels and labels, robust token layout; only tiny figures are rendered."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure

from infra_pl.report.aggregate import behaviour_summary, domain_difficulty_table, group_summary
from infra_pl.report.plots import _layout, behaviour_bars, figure_png, grouped_bars, score_histograms, token_heatmap
from infra_pl.report.tokens import top_token_mask
from infra_pl.report.validate import ReportInputError

FAST = {"n_boot": 50, "seed": 0}


def _texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def test_score_histograms_one_panel_per_measurement(instance_df):
    fig = score_histograms(instance_df)
    assert isinstance(fig, Figure)
    assert [ax.get_title() for ax in fig.axes] == ["influence on math", "influence on code"]
    assert "math (n=4)" in _texts(fig) and "code (n=3)" in _texts(fig)
    with pytest.raises(ReportInputError):
        score_histograms(instance_df.drop(columns=["domain"]))


def test_grouped_bars_error_bars_and_missing_keys(instance_df):
    table = group_summary(instance_df, "category", **FAST)
    fig = grouped_bars(table, x="category", title="by category")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["bash", "fobar", "python", "sv"]
    assert len(ax.patches) == 8  # 4 categories x 2 measurements
    # series in table order (math, then code), groups bash, fobar, python, sv within each
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([3.0, -1.0, 1.5, 3.0, 4.0, -0.5, 1.0, 0.5])
    # null difficulty as a series key and as an x group both work (labelled n/a)
    dd = domain_difficulty_table(instance_df, **FAST)
    grouped_bars(dd, x="domain", series="difficulty")
    fig = grouped_bars(dd, x="difficulty", series=["domain", "measurement"], series_label=lambda k: f"{k[0]}->{k[1]}")
    assert "n/a" in [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "math->code" in _texts(fig)


def test_behaviour_bars(instance_df):
    fig = behaviour_bars(behaviour_summary(instance_df, **FAST))
    assert "math, with" in _texts(fig) and "code, without" in _texts(fig)


def test_top_token_mask():
    scores = np.arange(40, dtype=float) - 5  # 40 tokens -> top 2 (5%)
    assert list(np.flatnonzero(top_token_mask(scores))) == [38, 39]
    assert top_token_mask([-3.0, -1.0, -2.0]).sum() == 0  # nothing helps: nothing highlighted
    assert top_token_mask([1.0, 1.0, 0.5]).sum() == 2  # ties at the cut-off are kept
    assert top_token_mask([]).size == 0


def test_layout_wraps_long_tokens_and_newlines():
    placed, n_lines = _layout(["abc", "\n", "x" * 25, "de"], width=10)
    lines = {}
    for _, line, col, text in placed:
        lines.setdefault(line, []).append((col, text))
    assert lines[0] == [(0, "abc"), (3, "\u21b5")]
    assert [t for _, t in lines[1]] == ["x" * 10] and lines[3] == [(0, "x" * 5), (5, "de")]
    assert n_lines == 4
    assert all(col + len(text) <= 10 for _, _, col, text in placed)


def test_token_heatmap_caps_long_sequences_with_a_note():
    tokens = [" tok"] * 3000
    fig = token_heatmap(tokens, np.linspace(-1, 1, 3000), title="long", max_tokens=200)
    text = _texts(fig)
    assert "showing the first 200 of 3000 tokens" in text
    assert "(150 of 3000)" in text  # top 5% counted over all tokens, not only the drawn ones
    with pytest.raises(ValueError, match="NaN"):
        token_heatmap(["a"], [np.nan])
    with pytest.raises(ValueError, match="2 tokens but 1 scores"):
        token_heatmap(["a", "b"], [1.0])


def test_token_heatmap_renders_awkward_text_without_warnings():
    tokens = ["Okay", " $x$", " 中文", "\t", "\x00", " <b>", "\n", "def"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph or a mathtext parse would warn or raise
        png = figure_png(token_heatmap(tokens, np.arange(len(tokens), dtype=float) - 3, title="$odd$ title"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_labels_are_not_parsed_as_mathtext(instance_df):
    odd = instance_df.assign(category=["$\\frac$ cost"] * 7, domain=["$\\sqrt{$"] * 7)  # invalid mathtext
    table = group_summary(odd, ["domain", "category"], **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = grouped_bars(table, x="category", series="domain")
        figure_png(fig, dpi=40)
        figure_png(score_histograms(odd), dpi=40)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["$\\frac$ cost"]


# --------------------------------------------------------------------------- token classes, score distributions

from infra_pl.report.plots import score_distributions, token_class_bars  # noqa: E402
from infra_pl.report.token_classes import token_class_table  # noqa: E402


def test_token_class_bars_panels_per_measurement_and_metric(token_df, instance_df):
    table = token_class_table(token_df, instance_df, **FAST)
    fig = token_class_bars(table)
    assert len(fig.axes) == 4  # 2 metrics x 2 measurements
    assert [ax.get_title() for ax in fig.axes[:2]] == ["influence on math", "influence on code"]
    classes = list(dict.fromkeys(table["token_class"]))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == classes
    assert "code traces (n=1)" in _texts(fig) and "share of all tokens" in _texts(fig)
    assert len(fig.axes[0].patches) == len(classes)  # one domain in this table: one bar per class
    assert figure_png(fig, dpi=40)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown metric"):
        token_class_bars(table, metrics=["mean"])


def test_score_distributions_symlog_with_proponents(instance_df):
    fig = score_distributions(instance_df, top_k=3)
    assert [ax.get_title() for ax in fig.axes] == ["influence on math", "influence on code"]
    assert all(ax.get_xscale() == "symlog" for ax in fig.axes)
    text = _texts(fig)
    # math: top 3 are f (5, code), d (4, math), g (3, code); code: g (4), d (2), then e and f tie at 1
    assert "top 3 proponents: math 1, code 2" in text
    assert "top 4 proponents: math 1, code 3" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = figure_png(fig, dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_score_distributions_zero_negative_and_constant_scores(instance_df):
    odd = instance_df.assign(score_math=0.0, score_code=[-1e6, -3.0, 0.0, 0.0, 1e-9, 2.0, 5e4])
    fig = score_distributions(odd, top_k=100)  # more than the table holds: all 7
    assert "top 7 proponents: math 4, code 3" in _texts(fig)
    assert len(figure_png(fig, dpi=40)) > 1000
    assert score_distributions(odd, measurements=["code"], linthresh=1.0).axes[0].get_xscale() == "symlog"
    with pytest.raises(ValueError, match="top_k"):
        score_distributions(instance_df, top_k=0)
    with pytest.raises(ReportInputError, match="NaN"):
        score_distributions(instance_df.assign(score_math=np.nan))
