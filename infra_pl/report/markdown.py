"""The Markdown twin of the HTML report: main tables inline, figures as links to PNGs beside it.

Why Markdown as well: it diffs well in a repository and renders in code review and notebooks.
Data text is escaped for Markdown *and* HTML (many renderers pass raw HTML through), so a token
or sentence cannot inject markup.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from infra_pl.report.content import ReportContent
from infra_pl.report.display import TABLE_NOTES, compact_table
from infra_pl.report.formatting import format_value

__all__ = ["markdown_table", "render_markdown", "write_markdown"]

MAX_ROWS = 200
_TEXT_CHARS = 160  # sentence text is cut in Markdown tables; the HTML report has it in full


def _md(value: Any, limit: int | None = None) -> str:
    """One table cell: formatted, single line, HTML-escaped, with Markdown's special characters escaped."""
    text = format_value(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "\u2026"
    text = html.escape(text, quote=False).replace("\r", " ").replace("\n", "\u21b5 ")
    for ch in "\\`*_[]|#":
        text = text.replace(ch, "\\" + ch)
    return text


def markdown_table(df: pd.DataFrame, max_rows: int = MAX_ROWS, text_limit: int | None = None) -> str:
    """A pipe table (no ``tabulate`` dependency); rows beyond ``max_rows`` are counted, not shown."""
    if df.empty:
        return "_(empty)_\n"
    columns = list(df.columns)
    lines = ["| " + " | ".join(_md(c) for c in columns) + " |",
             "| " + " | ".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else ":---" for c in columns) + " |"]
    for values in df.head(max_rows).itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_md(v, text_limit) for v in values) + " |")
    if len(df) > max_rows:
        lines.append(f"\n_{len(df) - max_rows} more row(s) in the CSV file._")
    return "\n".join(lines) + "\n"


def render_markdown(
    content: ReportContent,
    figure_files: list[tuple[str, str]],
    heatmap_files: Mapping[tuple[str, int], str] | None = None,
    table_links: Mapping[str, str] | None = None,
) -> str:
    """The Markdown text. ``figure_files`` are (caption, relative PNG path) pairs; ``heatmap_files``
    maps (measurement, rank) to a token-heatmap PNG; ``table_links`` maps table name to its CSV."""
    heatmap_files = dict(heatmap_files or {})
    table_links = dict(table_links or {})
    out = [f"# {_md(content.title)}", ""]
    if content.findings:
        out += ["## Findings on this run", ""]
        if content.warnings:
            out += [f"_⚠ {len(content.warnings)} warning(s) below qualify these numbers._", ""]
        for finding in content.findings:
            out += [f"### Finding {finding.number}: {_md(finding.title)} — **{finding.verdict.upper()}**", "",
                    f"_Paper:_ {_md(finding.paper)}", "", f"_Why:_ {_md(finding.why)}", ""]
            out += [f"- {_md(line)}" for line in finding.measured]
            out += [f"- ⚠ {_md(line)}" for line in finding.caveats]
            out.append("")
    for warning in content.warnings:
        out += [f"> **\u26a0 WARNING:** {_md(warning)}", ""]
    out += ["## What the scores mean", ""] + [p + "\n" for p in map(_md, content.meaning)]
    out += [f"_{_md(note)}_\n" for note in content.notes]
    if content.provenance:
        out += ["## Where the labels come from", ""] + [f"- {_md(line)}" for line in content.provenance] + [""]

    out += ["## Measurements (D_correct)", ""]
    info = pd.DataFrame([{"measurement": r.name, "correct items available": r.n_available, "items used (n)": r.n_used,
                          "fallback": r.fallback or "none (D_correct)", "target": r.target or "reference",
                          "f (mean log-likelihood)": r.f_value}
                         for r in content.measurement_rows])
    out.append(markdown_table(info) if len(info) else "_No measurement info was provided._\n")

    out += ["## Tables", ""]
    for name, table in content.tables.items():
        link = f" ([CSV, every column]({table_links[name]}))" if name in table_links else ""
        out += [f"### {_md(name)}{link}", ""]
        if name in TABLE_NOTES:
            out += [f"_{_md(TABLE_NOTES[name])}_", ""]
        out.append(markdown_table(compact_table(table)))

    out += ["## Figures", ""]
    for caption, path in figure_files:
        out += [f"![{_md(caption, 80)}]({path})", "", f"_{_md(caption)}_", ""]

    out += ["## Top influential examples", ""]
    for measurement, views in content.examples.items():
        flag = content.fallback_label(measurement)
        out += [f"### Measurement: {_md(measurement)}" + (f" **({flag})**" if flag else ""), ""]
        rows = [{"rank": v.rank, "id": v.id, "score": v.score, **v.meta,
                 "token scores": "yes" if v.has_tokens else "no",
                 "sentences": 0 if v.sentences is None else len(v.sentences)} for v in views]
        out.append(markdown_table(pd.DataFrame(rows)) if rows else "_No examples._\n")
        for view in views:
            path = heatmap_files.get((measurement, view.rank))
            if path:
                out += [f"Token heatmap of #{view.rank} ({_md(view.id)}): ![tokens]({path})", ""]
    out.append("_Token-level heatmaps of every listed example and per-sentence removal scores are in report.html._\n")
    return "\n".join(out)


def write_markdown(
    path: str | Path,
    content: ReportContent,
    figure_files: list[tuple[str, str]],
    heatmap_files: Mapping[tuple[str, int], str] | None = None,
    table_links: Mapping[str, str] | None = None,
) -> Path:
    """Write :func:`render_markdown` to ``path`` (UTF-8) and return it."""
    target = Path(path)
    target.write_text(render_markdown(content, figure_files, heatmap_files, table_links), encoding="utf-8")
    return target
