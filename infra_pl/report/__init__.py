"""Aggregation, figures and reports of influence scores (no Lightning imports: callbacks call in).

Modules: ``validate`` (input checks), ``bootstrap`` (CIs), ``aggregate`` (tables + ``write_tables``),
``tokens`` (token highlighting rules), ``plots`` (matplotlib figures), ``figures`` (which figures a
report shows), ``content`` (what a report says), ``html`` / ``markdown`` (renderers;
``html.write_report`` writes both). Names below are imported lazily so that reading a table does
not pay for importing matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ReportInputError": "validate",
    "behaviour_summary": "aggregate",
    "cross_domain_table": "aggregate",
    "domain_difficulty_table": "aggregate",
    "group_summary": "aggregate",
    "sentence_behaviour_summary": "aggregate",
    "standard_tables": "aggregate",
    "write_tables": "aggregate",
    "score_histograms": "plots",
    "grouped_bars": "plots",
    "behaviour_bars": "plots",
    "token_heatmap": "plots",
    "figure_png": "plots",
    "write_report": "html",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
