"""What the report says, independent of how it is rendered (HTML or Markdown).

Why a content model: the HTML and Markdown reports must state the same numbers, the same sign
convention and the same fallback warnings. Building them once here, and rendering twice, keeps the
two from drifting apart and keeps the renderers free of pandas logic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from infra_pl.report.aggregate import SENTENCE_COLUMNS, sentence_behaviours, without_behaviour_table
from infra_pl.report.formatting import is_missing
from infra_pl.report.tokens import TOKEN_COLUMNS, example_tokens
from infra_pl.report.validate import require_columns, require_finite, resolve_measurements, score_column

__all__ = ["ExampleView", "MeasurementRow", "ReportContent", "build_content", "score_meaning"]

_META = ("domain", "source", "category", "difficulty", "n_target_tokens")
FEW_ITEMS = 10  # below this many items in D_correct, f (and every score) is noisy


def score_meaning(n_train: int, ci_caption: str | None = None) -> list[str]:
    """The paragraphs that tell a reader what a score is and how to read its sign and size."""
    return [
        "Each training example z has one influence score S(z) per measurement. A measurement f is the "
        "mean log-likelihood of the correctly answered evaluation items of one domain (paper Eq. 6); "
        "S(z) = df/d\u03b5 is the first-order change in f when z is up-weighted by \u03b5 in the "
        "training objective, computed with EK-FAC influence functions (Eq. 4).",
        "Sign: S(z) > 0 means the example helps (up-weighting it raises the likelihood of correct "
        "answers); S(z) < 0 means it hurts. 'Share positive' is the fraction of examples with S(z) > 0.",
        f"Size: removing z from the N training examples changes f by about \u2212S(z)/N (here N = {n_train} "
        "scored examples); up-weighting it by \u03b5 changes f by about \u03b5\u00b7S(z). Magnitudes "
        "depend on the measurement (different items, different n), so compare signs, rankings and "
        "ratios across measurements rather than raw values.",
        ci_caption or "Intervals are percentile-bootstrap confidence intervals (resampling examples within a group).",
    ]


@dataclass
class MeasurementRow:
    """One measurement's D_correct bookkeeping, with a warning when it is not what it seems."""

    name: str
    n_available: Any
    n_used: Any
    fallback: Any
    f_value: Any
    warning: str | None = None
    target: Any = None  # which correct answers are teacher-forced: generated / reference / mixed


@dataclass
class ExampleView:
    """One top-influential example of one measurement, with its token and sentence scores."""

    measurement: str
    rank: int
    id: str
    score: float
    meta: dict[str, Any]
    tokens: list[str] = field(default_factory=list)
    token_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sentences: pd.DataFrame | None = None
    without: pd.DataFrame | None = None

    @property
    def has_tokens(self) -> bool:
        return bool(self.tokens)


@dataclass
class ReportContent:
    """Everything both renderers print, in reading order."""

    title: str
    n_train: int
    measurements: list[str]
    meaning: list[str]
    measurement_rows: list[MeasurementRow]
    tables: dict[str, pd.DataFrame]
    examples: dict[str, list[ExampleView]]
    notes: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)  # where targets, labels and levels come from
    findings: list[Any] = field(default_factory=list)  # infra_pl.report.findings.Finding, shown first
    provenance_warnings: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [row.warning for row in self.measurement_rows if row.warning] + self.provenance_warnings

    def fallback_label(self, measurement: str) -> str:
        """``"REFERENCE FALLBACK"`` (or the fallback's name) for a fallback measurement, else ``""``,
        so every heading of that measurement carries the label, not only the banner."""
        for row in self.measurement_rows:
            if row.name == measurement and row.fallback:
                return f"{str(row.fallback).upper()} FALLBACK"
        return ""


def _value(info: Any, key: str) -> Any:
    """A field of one measurement's info: a dict (from JSON / Parquet metadata) or an object with
    attributes (``infra_pl.eval.dcorrect.MeasurementSet``)."""
    value = info.get(key) if isinstance(info, Mapping) else getattr(info, key, None)
    return None if isinstance(value, float) and math.isnan(value) else value


def _measurement_rows(measurements: list[str], info: Mapping[str, Any] | None) -> list[MeasurementRow]:
    info = dict(info or {})
    rows = []
    for name in list(dict.fromkeys([*measurements, *info])):
        entry = info.get(name) or {}  # a dict or a MeasurementSet-like object
        row = MeasurementRow(name, _value(entry, "n_available"), _value(entry, "n_used"),
                             _value(entry, "fallback"), _value(entry, "f_value"), target=_target_label(entry))
        if not entry:
            row.warning = f"Measurement '{name}': no measurement info was provided (D_correct size unknown)."
        elif row.fallback == "reference":
            row.warning = (
                f"REFERENCE FALLBACK for measurement '{name}': only {row.n_available} correctly answered "
                f"item(s) were available, so f is the likelihood of the REFERENCE answers of {row.n_used} "
                "evaluation items (teacher-forced), not of answers the model got right. Its scores say which "
                "training data makes the reference solutions likely, which is not the paper's measurement."
            )
        elif row.fallback:
            row.warning = f"Measurement '{name}' uses fallback '{row.fallback}': it is not the paper's D_correct."
        elif isinstance(row.n_used, (int, np.integer)) and row.n_used < FEW_ITEMS:
            row.warning = (f"Measurement '{name}' uses only {row.n_used} item(s): f and its scores are noisy "
                           f"(the paper uses n = 100).")
        if name not in measurements and entry:
            row.warning = (row.warning + " " if row.warning else "") + \
                f"(No score_{name} column in the instance scores.)"
        rows.append(row)
    return rows


_TARGET_WORDS = {"generated": "the model's own correct generations", "reference": "the dataset's reference solutions"}


def _target_label(entry: Any) -> str | None:
    """``generated (100)`` / ``reference (40)`` / ``mixed: 30 generated, 10 reference``, from measurement info."""
    target = _value(entry, "target")
    counts = _value(entry, "target_counts") or {}
    if target is None:
        return None
    if target == "mixed":
        return "mixed: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    n = counts.get(target)
    return f"{target} ({n})" if n is not None else str(target)


def _direction_provenance(name: str, entry: Any) -> list[str]:
    """How a measurement's direction and scores were computed, when not by plain EK-FAC and a pass:
    CG refinement (iterations, stop reason, final residual) and scores read from the training index."""
    out = []
    refinement = _value(entry, "refinement")
    if refinement:
        residuals = refinement.get("residuals") or []
        final = f", relative residual {residuals[0]:.3g} → {residuals[-1]:.3g}" if residuals else ""
        out.append(f"Measurement '{name}': v = H⁻¹∇f refined from EK-FAC by {refinement.get('iterations')} CG "
                   f"iteration(s) on the damped {refinement.get('fisher', '')} Fisher over "
                   f"{refinement.get('examples')} training sequences (stopped: {refinement.get('stop_reason')}{final}).")
    source = _value(entry, "scored_from")
    if source:
        exact = "exact" if source.get("exact") else "approximate"
        out.append(f"Measurement '{name}': scores read from the training-gradient index ({source.get('kind')}, rank "
                   f"{source.get('rank')}, {source.get('dtype')}, {exact}) without a pass over the training set.")
        check = (source.get("check") or {}).get(name)
        if check:
            out.append(f"Measurement '{name}': on {check['examples']} sampled training examples scored exactly, the "
                       f"index scores agree with exact scores at Pearson {check['pearson']:.3f} (Spearman "
                       f"{check['spearman']:.3f}); every index score is calibrated as exact ≈ {check['slope']:.4g}·index "
                       f"{'+' if check['intercept'] >= 0 else '−'} {abs(check['intercept']):.3g}, and "
                       f"{source.get('exact_examples')} examples (the sample and the extremes) carry exact scores.")
        elif not source.get("exact"):
            out.append(f"Measurement '{name}': the index scores were not checked against exact scores "
                       "(index_check_examples: 0): raw, uncalibrated, agreement unknown.")
    return out


def data_provenance(instance_df: pd.DataFrame, sentence_df: pd.DataFrame | None,
                    measurement_info: Mapping[str, Any] | None) -> tuple[list[str], list[str], list[str]]:
    """Sentences saying where every label the tables group by came from, and the warnings among them.

    Why in the report: the same table means different things when difficulty is a MATH level or a
    trace-length quintile, when behaviours were tagged by rules or a judge, and when f measures the
    model's own answers or human references. A reader must see which, next to the numbers.
    """
    lines: list[str] = []
    warnings: list[str] = []
    weak: list[str] = []
    for name, entry in dict(measurement_info or {}).items():
        target = _value(entry, "target")
        if target is None:
            continue
        counts = _value(entry, "target_counts") or {}
        detail = ", ".join(f"{n} {_TARGET_WORDS.get(k, k)}" for k, n in counts.items() if n)
        lines.append(f"Measurement '{name}': y_i of Eq. 6 = {detail or target} (option target: "
                     f"{_value(entry, 'target_option') or target}).")
        lines += _direction_provenance(name, entry)
        answer_only = _value(entry, "answer_only_references")
        if answer_only:
            warnings.append(f"Measurement '{name}': {answer_only} item(s) teacher-force an answer-only reference "
                            "(no worked solution in the dataset), not a correct solution.")
    n = len(instance_df)
    behaviour_columns_ = [c for c in instance_df.columns if str(c).startswith("behaviour_")]
    if "tagged_by" in instance_df.columns and behaviour_columns_:
        taggers = sorted({str(t) for t in instance_df["tagged_by"].dropna()})
        shown = ", ".join(f"{c.removeprefix('behaviour_')} {int((instance_df[c] > 0).sum())}" for c in behaviour_columns_)
        lines.append(f"Behaviours: tagged by {', '.join(taggers) or 'unknown'} on the {n} training traces "
                     f"(traces showing each: {shown}); sentence labels come from the same tags.")
        trust, weak = _tagger_trust(taggers, instance_df.attrs.get("tagger_agreement"))
        lines += trust
        if weak:
            warnings.append(f"Behaviour labels of {', '.join(weak)} are unreliable (held-out F1 below 0.8 or kappa "
                            "below 0.6, see 'Where the labels come from'): read their behaviour rows as indicative only.")
    elif behaviour_columns_:
        lines.append("Behaviours: counts stored with the data (no tagger ran).")
    else:
        lines.append("Behaviours: not tagged (tagger: none), so the behaviour tables are omitted.")
    if "difficulty" in instance_df.columns:
        if instance_df["difficulty"].isna().all():
            lines.append("Difficulty: no example has a level (no signal configured: data.difficulty), "
                         "so the difficulty tables are omitted.")
        elif "difficulty_source" in instance_df.columns:
            parts = []
            for domain, group in instance_df.groupby("domain", sort=True):
                counts = group["difficulty_source"].fillna("none").value_counts()
                parts.append(f"{domain}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            lines.append("Difficulty levels from: " + "; ".join(parts) + ".")
            length = instance_df["difficulty_source"] == "length_quantile"
            if length.any():
                domains = sorted(instance_df.loc[length, "domain"].unique())
                warnings.append(f"difficulty = length quintile for {int(length.sum())} example(s) ({', '.join(domains)}): "
                                "their 'difficulty' is reasoning-trace length, a proxy; read difficulty findings "
                                "for them as findings about length.")
    if "truncated" in instance_df.columns and instance_df["truncated"].any():
        lines.append(f"Truncation: {int(instance_df['truncated'].sum())} of {n} training examples are longer than "
                     "max_length; their scores cover the kept prefix.")
    past = dict((sentence_df.attrs.get("sentences_past_cut") or {})) if sentence_df is not None else {}
    if past:
        lines.append(f"Sentence scores: {sum(past.values())} sentence(s) of {len(past)} example(s) lie wholly past "
                     "max_length (never trained on) and are left out of every sentence table.")
    return lines, warnings, weak


def _tagger_trust(taggers: list[str], agreement: Mapping[str, float] | None) -> tuple[list[str], list[str]]:
    """How far Finding 3 can be trusted: the rules' measured held-out accuracy, or the judge's
    agreement with the rules on this data, and the behaviours below the bar."""
    from infra_pl.data.behaviours import tagger_accuracy

    lines, weak = [], []
    if taggers == ["rules"]:
        data = tagger_accuracy()
        split = data["splits"][data.get("reported_split", "heldout")]
        scores = {b: m["f1"] for b, m in split["behaviours"].items()}
        stale = " (the rules changed since it was measured: rerun benchmarks/bench_tagger.py)" if data.get("stale") else ""
        lines.append(f"Rule tagger accuracy per sentence on {split['traces']} held-out hand-labelled traces "
                     "(benchmarks/bench_tagger.py), F1: " + ", ".join(f"{b} {f:.2f}" for b, f in scores.items()) + stale + ".")
        weak = [b for b, f in scores.items() if f < 0.8]
    elif agreement:
        lines.append("Agreement of the tagger with the rule tagger on these traces (Cohen's kappa per sentence): "
                     + ", ".join(f"{b} {k:.2f}" for b, k in agreement.items()) + "; its own accuracy was not "
                     "measured in this run (benchmarks/bench_tagger.py --judge-url measures it).")
        weak = [b for b, k in agreement.items() if not k >= 0.6]
    return lines, weak


def _meta(row: pd.Series) -> dict[str, Any]:
    """The example's descriptive columns that exist (null values kept as None)."""
    return {key: (None if is_missing(row[key]) else row[key]) for key in _META if key in row.index}


def build_content(
    instance_df: pd.DataFrame,
    token_df: pd.DataFrame | None,
    sentence_df: pd.DataFrame | None,
    measurement_info: Mapping[str, Mapping[str, Any]] | None,
    tables: Mapping[str, pd.DataFrame],
    top_k: int = 10,
    title: str = "Influence attribution report",
    ci_caption: str | None = None,
) -> ReportContent:
    """Validate the inputs and gather the report's content: top-``top_k`` examples per measurement
    (highest score first) with their token scores, sentence scores and per-behaviour removal."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    measurements = resolve_measurements(instance_df, None)
    require_columns(instance_df, ["id", "domain"], "instance scores")
    require_finite(instance_df, [score_column(m) for m in measurements], "instance scores")
    has_tokens = token_df is not None and len(token_df) > 0
    has_sentences = sentence_df is not None and len(sentence_df) > 0
    if has_tokens:
        require_columns(token_df, TOKEN_COLUMNS, "token scores")
    if has_sentences:
        require_columns(sentence_df, SENTENCE_COLUMNS, "sentence scores")
        require_finite(sentence_df, ["score_removal"], "sentence scores")

    examples: dict[str, list[ExampleView]] = {}
    for m in measurements:
        top = instance_df.sort_values(score_column(m), ascending=False, kind="stable").head(top_k)
        views = []
        for rank, (_, row) in enumerate(top.iterrows(), start=1):
            view = ExampleView(m, rank, str(row["id"]), float(row[score_column(m)]), _meta(row))
            if has_tokens:
                view.tokens, view.token_scores = example_tokens(token_df, view.id, m)
            if has_sentences:
                rows = sentence_df[(sentence_df["id"].astype(str) == view.id) & (sentence_df["measurement"].astype(str) == m)]
                if len(rows):
                    rows = rows.sort_values("sentence_index", kind="stable").copy()
                    rows["behaviours"] = rows["behaviours"].map(sentence_behaviours)
                    view.sentences = rows
                    view.without = without_behaviour_table(rows, view.score)
            views.append(view)
        examples[m] = views

    notes = []
    if not has_tokens:
        notes.append("No token scores were provided: token heatmaps are omitted.")
    if not has_sentences:
        notes.append("No sentence scores were provided: sentence tables are omitted.")
    from infra_pl.report.findings import build_findings

    provenance, provenance_warnings, weak = data_provenance(instance_df, sentence_df, measurement_info)
    not_observed = list(tables.get("behaviours").attrs.get("not_observed", [])) if "behaviours" in tables else []
    if not_observed:
        provenance.append(f"No training example shows {', '.join(not_observed)}: no row for it in the behaviour table.")
    return ReportContent(
        findings=build_findings(tables, weak),
        provenance=provenance,
        provenance_warnings=provenance_warnings,
        title=title,
        n_train=len(instance_df),
        measurements=measurements,
        meaning=score_meaning(len(instance_df), ci_caption),
        measurement_rows=_measurement_rows(measurements, measurement_info),
        tables=dict(tables),
        examples=examples,
        notes=notes,
    )
