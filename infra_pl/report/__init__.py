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
    "in_vs_cross_domain_table": "aggregate",
    "difficulty_contrast_table": "aggregate",
    "extra_tables": "analyses",
    "behaviour_removal_summary": "removal",
    "token_class_table": "token_classes",
    "dcorrect_robustness": "robustness",
    "build_findings": "findings",
    "score_distributions": "plots",
    "token_class_bars": "plots",
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
