"""Matplotlib figures of the paper's analyses: histograms (Fig. 2), grouped bars with CIs
(Figs. 3, 5, 6), a token heatmap (Fig. 7), token-class bars (Finding 4) and symmetric-log score
distributions with the top proponents marked (Figs. 2 and 8).

Why ``matplotlib.figure.Figure`` and never ``pyplot``: pyplot keeps global state and picks a GUI
backend; figures built directly render with Agg, leak nothing when dropped, and are safe to build
in a training process. Every function returns a Figure, so a callback can pass it to
TensorBoard's ``add_figure`` and the report can save it as PNG (:func:`figure_png`).
"""

from __future__ import annotations

import functools
import io
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.patches import Rectangle

from infra_pl.report.tokens import colour_scale, printable, score_rgb, top_token_mask
from infra_pl.report.validate import require_columns, require_finite, resolve_measurements, score_column

__all__ = [
    "behaviour_bars",
    "figure_png",
    "grouped_bars",
    "score_distributions",
    "score_histograms",
    "token_class_bars",
    "token_heatmap",
]

_DOMAIN_COLOURS = {"math": "#1f77b4", "code": "#ff7f0e"}
_MONO = "DejaVu Sans Mono"  # ships with matplotlib; a fixed advance width makes the layout exact


def figure_png(fig: Figure, dpi: float | None = None) -> bytes:
    """PNG bytes of a figure (Agg, no pyplot), by default at the figure's own dpi.

    No ``bbox_inches="tight"``: every figure here is laid out already (constrained layout, or the
    exact grid of the heatmap), and a tight box would draw each figure twice. The token heatmap is
    laid out for its own dpi (glyph advances are hinted to whole pixels), so keep the default dpi
    unless a slightly misaligned heatmap is acceptable.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi="figure" if dpi is None else dpi)
    return buffer.getvalue()


def _label(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "n/a"
    return str(value)


def _empty(fig: Figure, message: str) -> Figure:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", parse_math=False)
    return fig


def _checked_measurements(instance_df: pd.DataFrame, measurements: Sequence[str] | None) -> list[str]:
    """The measurements to plot, after checking the domain and their score columns (present, finite)."""
    names = resolve_measurements(instance_df, measurements)
    require_columns(instance_df, ["domain", *(score_column(m) for m in names)], "instance scores")
    require_finite(instance_df, [score_column(m) for m in names], "instance scores")
    return names


def score_histograms(
    instance_df: pd.DataFrame,
    measurements: Sequence[str] | None = None,
    bins: int = 40,
    log_y: bool = False,
) -> Figure:
    """One panel per measurement: score histograms of each training domain on shared bins.

    Figure 2's question is whether code data reaches the high-score range of math measurements
    (and vice versa), so the domains share bins and a line marks 0 (left: hurts, right: helps).
    """
    names = _checked_measurements(instance_df, measurements)
    fig = Figure(figsize=(4.6 * len(names), 3.4), layout="constrained")
    if instance_df.empty:
        return _empty(fig, "no instance scores")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    domains = list(dict.fromkeys(instance_df["domain"].map(_label)))
    for ax, name in zip(axes, names):
        values = instance_df[score_column(name)].to_numpy(dtype=float)
        edges = np.histogram_bin_edges(values, bins=bins)
        for i, domain in enumerate(domains):
            part = values[(instance_df["domain"].map(_label) == domain).to_numpy()]
            colour = _DOMAIN_COLOURS.get(domain, f"C{i + 2}")
            ax.hist(part, bins=edges, alpha=0.45, color=colour, label=f"{domain} (n={len(part)})")
            ax.hist(part, bins=edges, histtype="step", color=colour, linewidth=1.0)
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(f"influence on {name}", fontsize=10, parse_math=False)
        ax.set_xlabel("influence score S(z)")
        ax.set_ylabel("training examples")
        if log_y:
            ax.set_yscale("log")
        _literal_legend(ax.legend(title="training domain", fontsize=8, title_fontsize=8))
    return fig


def _sorted_keys(keys: list[tuple]) -> list[tuple]:
    """Keys in natural order, missing values last; table order if the values do not compare."""
    try:
        return sorted(keys, key=lambda key: tuple((_label(v) == "n/a", 0 if _label(v) == "n/a" else v) for v in key))
    except TypeError:
        return keys


def _combo(row: pd.Series, columns: list[str]) -> str:
    return " \u00b7 ".join(_label(row[c]) for c in columns)


def grouped_bars(
    table: pd.DataFrame,
    x: str | Sequence[str],
    series: str | Sequence[str] = "measurement",
    value: str = "mean",
    low: str | None = "mean_ci_low",
    high: str | None = "mean_ci_high",
    title: str = "",
    ylabel: str = "mean influence score",
    series_label: Callable[[tuple], str] | None = None,
    colors: Sequence[object] | None = None,
    sort_x: bool = False,
) -> Figure:
    """Bars of ``value`` per ``x`` group, one colour per ``series``, with CI error bars.

    Works on any long table from :mod:`infra_pl.report.aggregate`; e.g. Figure 5 (left) is
    ``grouped_bars(domain_difficulty, x="difficulty", series=["domain", "measurement"],
    series_label=lambda k: f"{k[0]}\u2192{k[1]}")``. Missing CIs draw no error bar. ``colors``
    (one per series, in order of first appearance) defaults to matplotlib's cycle. Groups keep the
    table's order unless ``sort_x`` (e.g. difficulty levels; missing keys go last).
    """
    xs = [x] if isinstance(x, str) else list(x)
    ss = [series] if isinstance(series, str) else list(series)
    require_columns(table, [*xs, *ss, value, *(c for c in (low, high) if c)], "table")
    group_keys = list(dict.fromkeys(tuple(r[c] for c in xs) for _, r in table.iterrows()))
    if sort_x:
        group_keys = _sorted_keys(group_keys)
    groups = [" \u00b7 ".join(_label(v) for v in key) for key in group_keys]
    keys = list(dict.fromkeys(tuple(r[c] for c in ss) for _, r in table.iterrows()))
    longest = max((len(g) for g in groups), default=0)
    fig = Figure(figsize=(max(4.5, 0.22 * len(groups) * max(1, len(keys)) + 2.0), 3.6), layout="constrained")
    if table.empty:
        return _empty(fig, "no data")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(keys))
    positions = np.arange(len(groups))
    for i, key in enumerate(keys):
        mask = np.ones(len(table), dtype=bool)
        for column, part in zip(ss, key):
            column_values = table[column]
            mask &= (column_values.isna() if _label(part) == "n/a" else column_values == part).to_numpy(dtype=bool, na_value=False)
        part_df = table[mask]
        heights = np.full(len(groups), np.nan)
        err = np.zeros((2, len(groups)))
        for _, row in part_df.iterrows():
            g = groups.index(_combo(row, xs))
            v = float(row[value]) if not pd.isna(row[value]) else np.nan
            heights[g] = v
            if low and high and not (pd.isna(row[low]) or pd.isna(row[high]) or np.isnan(v)):
                err[:, g] = [max(0.0, v - float(row[low])), max(0.0, float(row[high]) - v)]
        label = series_label(key) if series_label else " / ".join(_label(k) for k in key)
        err[:, np.isnan(heights)] = np.nan  # no bar, no stray cap line, for a missing combination
        ax.bar(positions + (i - (len(keys) - 1) / 2) * width, heights, width,
               yerr=err if low and high else None, capsize=2, label=label,
               color=colors[i % len(colors)] if colors else f"C{i}",
               error_kw={"linewidth": 0.8})
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(positions, groups, rotation=30 if longest > 6 or len(groups) > 8 else 0,
                  ha="right" if longest > 6 or len(groups) > 8 else "center", fontsize=8, parse_math=False)
    ax.set_xlabel(" \u00b7 ".join(xs))
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10, parse_math=False)
    if len(keys) > 1 or ss != ["measurement"]:
        _literal_legend(ax.legend(fontsize=8))
    elif keys:
        _literal_legend(ax.legend(fontsize=8, title=ss[0], title_fontsize=8))
    return fig


def _literal_legend(legend) -> None:
    """Data names ("$x$ tasks") are shown as typed, never parsed as mathtext."""
    for text in [*legend.get_texts(), legend.get_title()]:
        text.set_parse_math(False)


def behaviour_bars(behaviour_table: pd.DataFrame, title: str = "examples with vs without each behaviour") -> Figure:
    """Figure 6 (right) from :func:`~infra_pl.report.aggregate.behaviour_summary`: mean score of
    examples with and without each behaviour, per measurement, with CIs."""
    require_columns(behaviour_table, ["behaviour", "measurement", "mean_with", "mean_without"], "behaviour table")
    long = []
    for side in ("with", "without"):
        part = behaviour_table[["behaviour", "measurement"]].copy()
        part["side"] = side
        part["order"] = np.arange(len(part))
        for stat in ("", "_ci_low", "_ci_high"):
            column = f"mean_{side}{stat}"
            part[f"mean{stat}"] = behaviour_table[column] if column in behaviour_table else np.nan
        long.append(part)
    # measurement-major order (math with, math without, code with, ...): a pair shares a hue,
    # "without" is the pale one, so the eye compares the two bars of a pair.
    frame = pd.concat(long, ignore_index=True)
    measurements = list(dict.fromkeys(behaviour_table["measurement"]))
    frame["m"] = frame["measurement"].map(measurements.index)
    frame = frame.sort_values(["m", "side", "order"], kind="stable").drop(columns=["m", "order"])
    colors = [c for i in range(len(measurements)) for c in (to_rgb(f"C{i}"), _pale(f"C{i}"))]
    return grouped_bars(frame, x="behaviour", series=["measurement", "side"], title=title,
                        series_label=lambda k: f"{k[0]}, {k[1]}", colors=colors)


def _pale(colour: str) -> tuple[float, float, float]:
    return tuple(0.45 * c + 0.55 for c in to_rgb(colour))  # type: ignore[return-value]


# --------------------------------------------------------------------------- token heatmap


@functools.lru_cache(maxsize=1)
def _mono_charmap() -> frozenset[int]:
    """Code points the monospace font can draw (anything else would print a warning and a box)."""
    path = font_manager.findfont(font_manager.FontProperties(family=_MONO), fallback_to_default=True)
    return frozenset(FT2Font(path).get_charmap())


@functools.lru_cache(maxsize=8)
def _glyph_advance_px(fontsize: float, dpi: float) -> float:
    """Rendered width of one monospace glyph in pixels at ``dpi``.

    Why measure: Agg hints glyph advances to whole pixels, so the nominal 0.602 em is off by up to
    5% and a 100-character line drifts by several cells. One line of text is drawn per grid row, so
    the grid must use the advance the renderer really applies.
    """
    fig = Figure(dpi=dpi)
    probe = fig.text(0, 0, "x" * 100, family=_MONO, fontsize=fontsize, parse_math=False)
    return probe.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width / 100.0


def _drawable(text: str) -> str:
    """``text`` with characters the font lacks (CJK, emoji, ...) replaced by ``□``: one cell each,
    so the character grid stays exact and rendering stays silent."""
    charmap = _mono_charmap()
    return "".join(ch if ord(ch) in charmap or ch == " " else "\u25a1" for ch in text)


def _layout(tokens: Sequence[str], width: int) -> tuple[list[tuple[int, int, int, str]], int]:
    """Place token pieces on a character grid: (token index, line, column, text) tuples.

    A token that does not fit on the current line moves to the next one; a token longer than a
    line is cut across lines; a newline inside a token shows as ``↵`` and breaks the line.
    """
    placed: list[tuple[int, int, int, str]] = []
    line = col = 0
    for index, token in enumerate(tokens):
        pieces = token.split("\n")
        for p, piece in enumerate(pieces):
            text = _drawable(printable(piece)) + ("\u21b5" if p < len(pieces) - 1 else "")
            if col > 0 and col + len(text) > width >= len(text):
                line, col = line + 1, 0
            while text:
                room = width - col
                placed.append((index, line, col, text[:room]))
                col += len(text[:room])
                text = text[room:]
                if text:
                    line, col = line + 1, 0
            if p < len(pieces) - 1:
                line, col = line + 1, 0
    return placed, line + (1 if col > 0 or not placed else 0)


def token_heatmap(
    tokens: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    title: str = "",
    top_fraction: float = 0.05,
    max_tokens: int = 800,
    width_chars: int = 100,
    fontsize: float = 8.0,
    dpi: float = 110.0,
) -> Figure:
    """Tokens laid out as wrapped text, background coloured by score, top tokens boxed in bold.

    Warm backgrounds raise f, cool ones lower it (scaled by the largest |score| of the example).
    The top ``top_fraction`` is computed over *all* tokens, before at most ``max_tokens`` are drawn,
    so capping a long trace never changes which tokens count as top; a note says what was left out.
    Text is drawn as one string per line and weight (monospaced, on a grid measured at ``dpi``),
    which keeps a long trace to a few hundred artists instead of one per token.
    """
    scores = np.asarray(scores, dtype=float)
    if len(tokens) != len(scores):
        raise ValueError(f"token_heatmap: {len(tokens)} tokens but {len(scores)} scores")
    if not np.isfinite(scores).all():
        raise ValueError(f"token_heatmap: {int((~np.isfinite(scores)).sum())} token score(s) are NaN or infinite")
    if max_tokens < 1 or width_chars < 1:
        raise ValueError("token_heatmap: max_tokens and width_chars must be positive")
    top = top_token_mask(scores, top_fraction) if len(scores) else np.zeros(0, dtype=bool)
    scale = colour_scale(scores)
    placed, n_lines = _layout([str(t) for t in tokens[:max_tokens]], width_chars)

    char_w = _glyph_advance_px(fontsize, dpi) / dpi
    line_h = 1.55 * fontsize / 72.0
    header_h = 0.42 if title else 0.24
    body_w, body_h = width_chars * char_w, max(1, n_lines) * line_h
    fig = Figure(figsize=(body_w + 0.3, body_h + header_h + 0.15), dpi=dpi)
    fig_w, fig_h = fig.get_size_inches()
    ax = fig.add_axes((0.15 / fig_w, 0.1 / fig_h, body_w / fig_w, body_h / fig_h))
    ax.set_xlim(0, width_chars)
    ax.set_ylim(max(1, n_lines), 0)
    ax.axis("off")

    boxes, faces, edges, widths = [], [], [], []
    rows = {weight: [[" "] * width_chars for _ in range(max(1, n_lines))] for weight in ("normal", "bold")}
    for index, line, col, text in placed:
        is_top = bool(top[index])
        boxes.append(Rectangle((col, line + 0.06), len(text), 0.88))
        faces.append(score_rgb(scores[index], scale))
        edges.append("black" if is_top else "none")
        widths.append(0.9 if is_top else 0.0)
        rows["bold" if is_top else "normal"][line][col:col + len(text)] = list(text)
    ax.add_collection(PatchCollection(boxes, facecolors=faces, edgecolors=edges, linewidths=widths))
    for weight, grid in rows.items():
        for line, chars in enumerate(grid):
            text = "".join(chars).rstrip()
            if text.strip():
                ax.text(0, line + 0.5, text, family=_MONO, fontsize=fontsize, va="center_baseline", ha="left",
                        fontweight=weight, parse_math=False, clip_on=False)

    notes = [f"warm = raises f, cool = lowers f (max |score| = {scale:.3g}); "
             f"boxed bold = top {top_fraction:.0%} tokens ({int(top.sum())} of {len(tokens)})"]
    if len(tokens) > max_tokens:
        notes.append(f"showing the first {max_tokens} of {len(tokens)} tokens")
    y = 1.0 - 0.08 / fig_h
    if title:
        fig.text(0.15 / fig_w, y, title, fontsize=fontsize + 2, va="top", parse_math=False, fontweight="bold")
        y -= 0.22 / fig_h
    fig.text(0.15 / fig_w, y, "; ".join(notes), fontsize=fontsize, va="top", parse_math=False, color="#444444")
    return fig


# --------------------------------------------------------------------------- token classes (Finding 4)

_CLASS_METRICS = {
    "share_top": "share of the top tokens",
    "share_positive_influence": "share of positive influence",
    "share_tokens": "share of all tokens",
}


def token_class_bars(
    table: pd.DataFrame,
    metrics: Sequence[str] = ("share_top", "share_positive_influence"),
    show_base_rate: bool = True,
) -> Figure:
    """Finding 4 from :func:`~infra_pl.report.token_classes.token_class_table`: one column of
    panels per measurement, one row per metric; in each panel grouped bars per token class, one
    colour per training domain (math vs code traces), with the bootstrap CIs as error bars.

    With ``show_base_rate`` a black tick on each bar marks the class's share of *all* tokens of
    those traces, so a bar above its tick is a class over-represented among the top tokens (or
    holding more than its share of the positive influence).
    """
    unknown = [m for m in metrics if m not in _CLASS_METRICS]
    if unknown or not metrics:
        raise ValueError(f"token_class_bars: unknown metric(s) {unknown or metrics}; choose from {sorted(_CLASS_METRICS)}")
    require_columns(table, ["measurement", "domain", "token_class", *metrics], "token class table")
    names = list(dict.fromkeys(table["measurement"].map(_label)))
    classes = list(dict.fromkeys(table["token_class"].map(_label)))
    domains = list(dict.fromkeys(table["domain"].map(_label)))
    fig = Figure(figsize=(max(5.0, 0.32 * len(classes) * max(1, len(domains)) + 1.6) * max(1, len(names)),
                          2.9 * len(metrics) + 0.4), layout="constrained")
    if table.empty:
        return _empty(fig, "no token scores")
    axes = fig.subplots(len(metrics), len(names), squeeze=False)
    width = 0.8 / max(1, len(domains))
    positions = np.arange(len(classes))
    for col, name in enumerate(names):
        part_m = table[table["measurement"].map(_label) == name]
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for i, domain in enumerate(domains):
                part = part_m[part_m["domain"].map(_label) == domain].set_index("token_class")
                part.index = part.index.map(_label)
                heights = np.array([float(part.at[c, metric]) if c in part.index and not pd.isna(part.at[c, metric]) else np.nan
                                    for c in classes])
                err = np.full((2, len(classes)), np.nan)
                low, high = f"{metric}_ci_low", f"{metric}_ci_high"
                if low in part.columns and high in part.columns:
                    for j, c in enumerate(classes):
                        if c in part.index and not (pd.isna(part.at[c, low]) or pd.isna(part.at[c, high]) or np.isnan(heights[j])):
                            err[:, j] = [max(0.0, heights[j] - float(part.at[c, low])), max(0.0, float(part.at[c, high]) - heights[j])]
                x = positions + (i - (len(domains) - 1) / 2) * width
                n_examples = int(part["n_examples"].iloc[0]) if "n_examples" in part.columns and len(part) else 0
                ax.bar(x, heights, width, yerr=err, capsize=2, error_kw={"linewidth": 0.8},
                       color=_DOMAIN_COLOURS.get(domain, f"C{i + 2}"), alpha=0.85,
                       label=f"{domain} traces (n={n_examples})")
                if show_base_rate and metric != "share_tokens" and "share_tokens" in part.columns:
                    base = np.array([float(part.at[c, "share_tokens"]) if c in part.index else np.nan for c in classes])
                    ax.hlines(base, x - width / 2, x + width / 2, colors="black", linewidth=1.2,
                              label="share of all tokens" if i == 0 else None)
            ax.set_xticks(positions, classes, rotation=35, ha="right", fontsize=8, parse_math=False)
            ax.set_ylabel(_CLASS_METRICS[metric], fontsize=9)
            ax.set_ylim(bottom=0.0)
            if row == 0:
                ax.set_title(f"influence on {name}", fontsize=10, parse_math=False)
            if row == 0 and col == len(names) - 1:
                _literal_legend(ax.legend(fontsize=7, title="training examples", title_fontsize=7))
    return fig


# --------------------------------------------------------------------------- score distributions (Figs. 2, 8)


def _symlog_threshold(values: np.ndarray) -> float:
    """Width of the linear region around 0: the 5th percentile of the non-zero |scores| rounded down
    to a power of 10, so almost every example sits on the logarithmic part, zeros are still drawn,
    and the ticks -10^k, 0, 10^k are one decade apart (1 when all scores are 0)."""
    magnitudes = np.abs(values[values != 0])
    if magnitudes.size == 0:
        return 1.0
    quantile = float(max(np.quantile(magnitudes, 0.05), np.finfo(float).tiny))
    return float(10.0 ** math.floor(math.log10(quantile)))


def score_distributions(
    instance_df: pd.DataFrame,
    measurements: Sequence[str] | None = None,
    top_k: int = 100,
    bins: int = 50,
    linthresh: float | None = None,
    log_y: bool = False,
) -> Figure:
    """Score distributions as in the paper's Figures 2 and 8: one panel per measurement, a histogram
    per training domain on a symmetric-log x axis, the top-``top_k`` proponents highlighted.

    Why symlog: instance scores span orders of magnitude and both signs; on a linear axis the bulk
    collapses into one bar next to 0 and the tail that matters (the proponents) is invisible. Bins
    are evenly spaced on the drawn axis, so their widths read the same everywhere. ``linthresh``
    (the linear region around 0) defaults to the 5th percentile of the non-zero |scores|, rounded
    down to a power of 10.

    Proponents: the ``top_k`` examples with the largest score for that measurement (capped at the
    table's size, ties at the cut included). Their range is shaded, each is a rug tick in its
    domain's colour along the top of the panel, and the legend says how many come from each domain
    - Finding 1's question, whether the other domain reaches the top.
    """
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if linthresh is not None and not linthresh > 0:
        raise ValueError(f"linthresh must be positive, got {linthresh!r}")
    names = _checked_measurements(instance_df, measurements)
    fig = Figure(figsize=(5.0 * len(names), 3.6), layout="constrained")
    if instance_df.empty:
        return _empty(fig, "no instance scores")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    labels = instance_df["domain"].map(_label).to_numpy()
    domains = list(dict.fromkeys(labels))
    colours = {d: _DOMAIN_COLOURS.get(d, f"C{i + 2}") for i, d in enumerate(domains)}
    for ax, name in zip(axes, names):
        values = instance_df[score_column(name)].to_numpy(dtype=float)
        threshold = linthresh if linthresh is not None else _symlog_threshold(values)
        ax.set_xscale("symlog", linthresh=threshold, linscale=1.0)
        transform = ax.xaxis.get_transform()
        lo, hi = transform.transform(np.array([values.min(), values.max()]))
        if hi - lo <= 0:
            lo, hi = lo - 0.5, hi + 0.5
        edges = transform.inverted().transform(np.linspace(lo, hi, bins + 1))
        edges[0], edges[-1] = min(edges[0], values.min()), max(edges[-1], values.max())
        k = min(int(top_k), len(values))
        cut = float(np.sort(values)[-k])
        top = values >= cut
        counts = {d: int((top & (labels == d)).sum()) for d in domains}
        ax.axvspan(cut, edges[-1], color="#f2c14e", alpha=0.25, linewidth=0,
                   label=f"top {int(top.sum())} proponents: " + ", ".join(f"{d} {c}" for d, c in counts.items()))
        for domain in domains:
            part = values[labels == domain]
            ax.hist(part, bins=edges, alpha=0.45, color=colours[domain], label=f"{domain} (n={len(part)})")
            ax.hist(part, bins=edges, histtype="step", color=colours[domain], linewidth=1.0)
        for domain in domains:
            picked = values[top & (labels == domain)]
            if picked.size:
                ax.plot(picked, np.full(picked.size, 0.97), "|", transform=ax.get_xaxis_transform(),
                        color=colours[domain], markersize=9, markeredgewidth=1.0)
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(f"influence on {name}", fontsize=10, parse_math=False)
        ax.set_xlabel(f"influence score S(z) (symlog, linear within \u00b1{threshold:.2g})")
        ax.set_ylabel("training examples")
        if log_y:
            ax.set_yscale("log")
        _literal_legend(ax.legend(title="training domain", fontsize=7, title_fontsize=8))
    return fig
