"""The self-contained HTML report, and :func:`write_report`, which writes it with its Markdown twin.

Why self-contained: the report is copied off clusters and opened from disk or a mail attachment;
figures are embedded as base64 PNG and the styling is inline, with no scripts and nothing fetched
from the network. Every piece of data text (token pieces, sentences, ids, categories) goes through
:func:`html.escape`, because training data routinely contains ``<`` / ``&`` and sometimes markup.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from infra_pl.report.aggregate import standard_tables, write_tables
from infra_pl.report.content import ExampleView, ReportContent, build_content
from infra_pl.report.display import TABLE_NOTES, compact_table
from infra_pl.report.figures import report_figures
from infra_pl.report.formatting import MISSING, format_value
from infra_pl.report.markdown import write_markdown
from infra_pl.report.plots import figure_png, token_heatmap
from infra_pl.report.tokens import colour_scale, printable, score_rgb, top_token_mask

__all__ = ["render_html", "token_spans", "write_report"]

MAX_TABLE_ROWS = 400
MAX_SENTENCE_CHARS = 1200

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
td.text { white-space: pre-wrap; font-family: ui-monospace, 'DejaVu Sans Mono', monospace; max-width: 60em; }
.meaning { background: #f6f8fa; border-left: 4px solid #4a7; padding: 0.6em 1em; }
.warning { background: #fff0f0; border: 2px solid #c00; color: #800; padding: 0.6em 1em; margin: 0.6em 0;
           font-weight: bold; }
.note { color: #555; font-size: 0.9em; }
.finding { border-left: 5px solid #888; background: #fafafa; padding: 0.4em 1em; margin: 0.8em 0; }
.finding h3 { margin: 0.2em 0; } .finding p { margin: 0.3em 0; } .finding ul { margin: 0.3em 0; }
.finding.holds { border-color: #2a7; } .finding.partly-holds { border-color: #db3; }
.finding.does-not-hold { border-color: #c33; } .verdict { font-weight: bold; text-transform: uppercase; }
.caveat { color: #a50; }
.flag { background: #c00; color: #fff; padding: 0.1em 0.4em; border-radius: 3px; font-size: 0.8em; }
.tokens { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, 'DejaVu Sans Mono', monospace;
          font-size: 0.85em; line-height: 1.7; border: 1px solid #ddd; padding: 0.6em; max-height: 32em; overflow: auto; }
.tokens span.top { font-weight: bold; outline: 1.5px solid #000; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #444; font-size: 0.9em; }
details { margin: 0.4em 0 1.2em; } summary { cursor: pointer; font-weight: 600; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    return _e(format_value(value))


def _finding(finding: Any) -> str:
    """One finding block: verdict in the heading, the paper's claim, what was measured, caveats."""
    verdict_class = finding.verdict.replace(" ", "-")
    measured = "".join(f"<li>{_e(line)}</li>" for line in finding.measured)
    caveats = "".join(f'<li class="caveat">{_e(line)}</li>' for line in finding.caveats)
    return (f'<div class="finding {verdict_class}"><h3>Finding {finding.number}: {_e(finding.title)} — '
            f'<span class="verdict">{_e(finding.verdict)}</span></h3>'
            f"<p><i>Paper:</i> {_e(finding.paper)}</p><p><i>Why:</i> {_e(finding.why)}</p>"
            + (f"<ul>{measured}</ul>" if measured else "") + (f"<ul>{caveats}</ul>" if caveats else "") + "</div>")


def _table(df: pd.DataFrame, text_columns: tuple[str, ...] = (), headers: Mapping[str, str] | None = None,
           max_rows: int = MAX_TABLE_ROWS) -> str:
    """An escaped HTML table; string columns are left-aligned, numbers right-aligned."""
    headers = dict(headers or {})
    columns = list(df.columns)
    is_text = {c: c in text_columns or not pd.api.types.is_numeric_dtype(df[c]) for c in columns}
    cls = {c: ' class="text"' if is_text[c] else "" for c in columns}
    head = "".join(f"<th{cls[c]}>{_e(headers.get(c, c))}</th>" for c in columns)
    rows = []
    for values in df.head(max_rows).itertuples(index=False, name=None):
        cells = "".join(f"<td{cls[c]}>{_cell(v)}</td>" for c, v in zip(columns, values))
        rows.append(f"<tr>{cells}</tr>")
    more = f'<p class="note">{len(df) - max_rows} more row(s) in the CSV file.</p>' if len(df) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def token_spans(tokens: list[str], scores: np.ndarray, top_fraction: float = 0.05, max_tokens: int = 4000) -> str:
    """Tokens as coloured ``<span>``s (warm = raises f, cool = lowers f); top tokens bold and
    outlined; hovering shows the score. Newlines inside tokens show as ``↵`` and break the line."""
    scores = np.asarray(scores, dtype=float)
    top = top_token_mask(scores, top_fraction) if len(scores) else np.zeros(0, dtype=bool)
    scale = colour_scale(scores)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), dtype=int)
    rank[order] = np.arange(1, len(scores) + 1)
    parts = []
    for i, (token, score) in enumerate(zip(tokens[:max_tokens], scores[:max_tokens])):
        r, g, b = (int(round(255 * c)) for c in score_rgb(score, scale))
        title = f"score {score:.4g} (rank {rank[i]} of {len(scores)}), token {i}"
        css = ' class="top"' if top[i] else ""
        text = printable(token, newline="\u21b5\n", tab="\t")
        parts.append(f'<span{css} style="background:rgb({r},{g},{b})" title="{_e(title)}">{_e(text)}</span>')
    note = ""
    if len(tokens) > max_tokens:
        note = f'<p class="note">Showing the first {max_tokens} of {len(tokens)} tokens (top tokens ranked over all).</p>'
    return f'<div class="tokens">{"".join(parts)}</div>{note}'


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


_SENTENCE_HEADERS = {
    "sentence_index": "#",
    "kind": "kind",
    "behaviours": "behaviour labels",
    "text": "sentence",
    "score_removal": "removal score S(z) \u2212 S(z without sentence) (Eq. 7)",
    "score_token_sum": "token-sum approximation (\u03a3 token scores)",
    "n_tokens": "tokens",
}


def _sentence_table(rows: pd.DataFrame) -> str:
    columns = [c for c in _SENTENCE_HEADERS if c in rows.columns]
    shown = rows[columns].copy()
    if "text" in shown:
        shown["text"] = shown["text"].map(
            lambda t: t if not isinstance(t, str) or len(t) <= MAX_SENTENCE_CHARS
            else t[:MAX_SENTENCE_CHARS] + f" \u2026 ({len(t) - MAX_SENTENCE_CHARS} more characters)")
    return _table(shown, text_columns=("kind", "behaviours", "text"), headers=_SENTENCE_HEADERS, max_rows=len(shown))


def _example(view: ExampleView, top_fraction: float, max_tokens: int) -> str:
    meta = ", ".join(f"{k}: {format_value(v)}" for k, v in view.meta.items())
    out = [f"<h4>#{view.rank} \u00b7 {_e(view.id)} \u00b7 S(z) = {_e(format_value(view.score))}</h4>",
           f'<p class="note">{_e(meta)}</p>']
    if view.has_tokens:
        total = float(np.sum(view.token_scores))
        out.append(f'<p class="note">Token scores (Eq. 9) of {len(view.tokens)} target tokens, '
                   f"\u03a3 = {_e(format_value(total))}; bold outlined = top {top_fraction:.0%} tokens; "
                   "hover a token for its score.</p>")
        out.append(token_spans(view.tokens, view.token_scores, top_fraction, max_tokens))
    else:
        out.append('<p class="note">No token scores for this example (the token pass scores only the top-K '
                   "examples per measurement).</p>")
    if view.sentences is not None:
        out.append(f"<details><summary>Sentence scores ({len(view.sentences)} sentences: removal score and "
                   "token-sum approximation, with behaviour labels)</summary>"
                   f"{_sentence_table(view.sentences)}</details>")
    if view.without is not None and len(view.without):
        out.append('<p class="note">Score without all sentences of a behaviour: additive approximation '
                   "S(z) \u2212 \u03a3 removal scores (cf. paper Table 2, left).</p>")
        out.append(_table(view.without, text_columns=("behaviour",), headers={
            "n_sentences": "sentences", "sum_removal": "\u03a3 removal scores",
            "score_without_approx": "S(z without them) \u2248"}))
    return "\n".join(out)


def render_html(content: ReportContent, figures: list[tuple[str, str, bytes]], table_links: Mapping[str, str] | None = None,
                top_fraction: float = 0.05, max_tokens: int = 4000) -> str:
    """The report page. ``figures`` are (name, caption, png) triples; ``table_links`` maps a table
    name to the relative path of its CSV file (written beside the report)."""
    table_links = dict(table_links or {})
    body = [f"<h1>{_e(content.title)}</h1>"]
    if content.findings:
        body.append("<h2>Findings on this run</h2>")
        if content.warnings:
            body.append(f'<p class="note">⚠ {len(content.warnings)} warning(s) below qualify these numbers.</p>')
        body.extend(_finding(f) for f in content.findings)
    for warning in content.warnings:
        body.append(f'<div class="warning">\u26a0 {_e(warning)}</div>')
    body.append('<div class="meaning"><h3>What the scores mean</h3>'
                + "".join(f"<p>{_e(p)}</p>" for p in content.meaning) + "</div>")
    for note in content.notes:
        body.append(f'<p class="note">{_e(note)}</p>')
    if content.provenance:
        body.append("<h2>Where the labels come from</h2><ul>" + "".join(f"<li>{_e(line)}</li>" for line in content.provenance) + "</ul>")

    body.append("<h2>Measurements (D_correct)</h2>")
    if content.measurement_rows:
        info = pd.DataFrame([{"measurement": r.name, "correct items available": r.n_available,
                              "items used (n)": r.n_used, "fallback": r.fallback or "none (D_correct)",
                              "target": r.target or "reference", "f (mean log-likelihood)": r.f_value}
                             for r in content.measurement_rows])
        body.append(_table(info, text_columns=("measurement", "fallback", "target")))
    else:
        body.append('<p class="note">No measurement info was provided.</p>')

    body.append("<h2>Tables</h2>")
    for name, table in content.tables.items():
        link = f' <a href="{_e(table_links[name])}">(CSV, every column)</a>' if name in table_links else ""
        body.append(f"<h3>{_e(name)}{link}</h3>")
        if name in TABLE_NOTES:
            body.append(f'<p class="note">{_e(TABLE_NOTES[name])}</p>')
        body.append(_table(compact_table(table)) if len(table) else f'<p class="note">{MISSING} empty</p>')

    body.append("<h2>Figures</h2>")
    for name, caption, png in figures:
        body.append(f"<figure>{_img(png, name)}<figcaption>{_e(caption)}</figcaption></figure>")

    body.append("<h2>Top influential examples</h2>")
    body.append(f'<p class="note">Highest S(z) first, per measurement. Token colours: warm = raises f, '
                f"cool = lowers f, scaled per example; bold outlined = top {top_fraction:.0%} tokens.</p>")
    for measurement, views in content.examples.items():
        flag = content.fallback_label(measurement)
        flag = f' <span class="flag">{_e(flag)}</span>' if flag else ""
        body.append(f"<h3>Measurement: {_e(measurement)}{flag}</h3>")
        if not views:
            body.append('<p class="note">No examples.</p>')
        body.extend(_example(view, top_fraction, max_tokens) for view in views)

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(content.title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "x"


def write_report(
    out_dir: str | Path,
    instance_df: pd.DataFrame,
    token_df: pd.DataFrame | None = None,
    sentence_df: pd.DataFrame | None = None,
    measurement_info: Mapping[str, Mapping[str, Any]] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    top_k: int = 10,
    title: str = "Influence attribution report",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    heatmap_pngs: int = 1,
    top_fraction: float = 0.05,
    max_tokens: int = 4000,
) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md``, the figure PNGs and the tables (``tables/*.csv|json``).

    ``tables`` defaults to :func:`~infra_pl.report.aggregate.standard_tables` (with ``n_boot``,
    ``seed``, ``ci``). The Markdown report links the PNGs written beside it, including token heatmaps
    of the first ``heatmap_pngs`` examples per measurement that have token scores. Returns
    ``(html_path, md_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tables is None:
        tables = standard_tables(instance_df, sentence_df, n_boot=n_boot, seed=seed, ci=ci)
    from infra_pl.report.robustness import ci_coverage_caption

    caption = ci_coverage_caption(tables.get("dcorrect_robustness"), ci=ci, n_boot=n_boot)
    content = build_content(instance_df, token_df, sentence_df, measurement_info, tables, top_k=top_k, title=title,
                            ci_caption=caption)
    written = write_tables(out / "tables", content.tables)
    table_links = {name: f"tables/{paths['csv'].name}" for name, paths in written.items()}

    figures: list[tuple[str, str, bytes]] = []
    figure_files: list[tuple[str, str]] = []
    for item in report_figures(instance_df, content.tables):
        png = figure_png(item.figure)
        file_name = f"figure_{_safe(item.name)}.png"
        (out / file_name).write_bytes(png)
        figures.append((item.name, item.caption, png))
        figure_files.append((item.caption, file_name))

    heatmap_files: dict[tuple[str, int], str] = {}
    for measurement, views in content.examples.items():
        for view in [v for v in views if v.has_tokens][:heatmap_pngs]:
            fig = token_heatmap(view.tokens, view.token_scores, top_fraction=top_fraction,
                                title=f"{view.id} \u2014 {measurement} (S(z) = {format_value(view.score)})")
            file_name = f"figure_tokens_{_safe(measurement)}_{view.rank}.png"
            (out / file_name).write_bytes(figure_png(fig))
            heatmap_files[(measurement, view.rank)] = file_name

    html_path = out / "report.html"
    html_path.write_text(render_html(content, figures, table_links, top_fraction, max_tokens), encoding="utf-8")
    md_path = write_markdown(out / "report.md", content, figure_files, heatmap_files, table_links)
    return html_path, md_path
