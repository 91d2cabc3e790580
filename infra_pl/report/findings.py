"""The paper's four findings, checked on this run: what was measured, its interval, and a verdict.

Why a verdict per finding: a researcher opens the report to learn whether the paper's claims hold
on their model and data, and whether the answer is real or an artefact. Each :class:`Finding`
states the paper's claim, the numbers measured here with bootstrap CIs, and one of
:data:`VERDICTS`, with the reason and the caveats that qualify it (a difference that does not
survive length adjustment, levels that are length quintiles, behaviour labels of low measured
accuracy). The numbers come from the aggregate tables (``infra_pl.report.aggregate``,
``infra_pl.report.analyses``); nothing is recomputed here, so the block and the tables agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd

__all__ = ["VERDICTS", "Finding", "build_findings", "fmt", "interval"]

HOLDS, PARTLY, NOT, NOT_SIGNIFICANT, NOT_MEASURABLE = (
    "holds", "partly holds", "does not hold", "not significant here", "not measurable here")
VERDICTS = (HOLDS, PARTLY, NOT, NOT_SIGNIFICANT, NOT_MEASURABLE)

# What the paper expects of Finding 2: which difficulty helps each training domain (§4.2, Fig. 5).
PAPER_DIFFICULTY = {"math": "high", "code": "low"}
PAPER_TOKENS = {"math": ("connector", "word"), "code": ("code_syntax", "code_identifier")}


@dataclass
class Finding:
    """One paper finding as measured on this run."""

    number: int
    title: str
    paper: str
    verdict: str
    why: str
    measured: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)


def fmt(value: Any) -> str:
    """About three significant digits, thousands separated (4,173; 0.0123; 2.10e+07), missing as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2014"
    value = float(value)
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e6:
        digits = max(0, 2 - int(math.floor(math.log10(magnitude))))
        return f"{value:,.{digits}f}"
    return f"{value:.2e}"


def interval(row: Mapping[str, Any], value: str, low: str | None = None, high: str | None = None) -> str:
    """``4.1 [2.0, 6.3]`` from a row's value and CI columns (``<value>_ci_low`` by default)."""
    low = low or f"{value}_ci_low"
    high = high or f"{value}_ci_high"
    return f"{fmt(row.get(value))} [{fmt(row.get(low))}, {fmt(row.get(high))}]"


def _sign(row: Mapping[str, Any], column: str = "difference") -> int:
    """+1 / -1 when the CI of ``column`` excludes 0 on that side, 0 when it includes 0 (or is missing)."""
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0


MIN_EXAMPLES = 5  # fewer examples behind a comparison: its bootstrap CI is not trusted for a verdict


def _robust_sign(row: Mapping[str, Any], column: str = "difference") -> int:
    """:func:`_sign`, but 0 when the raw difference does not survive length adjustment."""
    return 0 if row.get("length_driven") in (True, 1) else _sign(row, column)


def _raw_only(raw: list[int], robust: list[int]) -> str:
    """The sentence added to a verdict that raw sums alone would have decided differently."""
    if raw == robust:
        return ""
    return (" On raw sums alone more of it would look significant, but that part does not survive length "
            "adjustment (possibly length-driven; see caveats).")


def _length_note(row: Mapping[str, Any], what: str) -> str | None:
    flag = row.get("length_driven")
    if flag is True or flag == 1:
        return (f"{what}: the raw difference does not survive length adjustment "
                f"(adjusted {interval(row, 'difference_length_adjusted')}): possibly length-driven.")
    return None


def _rows(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    return [] if table is None else table.to_dict("records")


# ------------------------------------------------------------------------------------ Finding 1


def _finding1(tables: Mapping[str, pd.DataFrame]) -> Finding:
    finding = Finding(1, "In-domain data is the most influential; data of one domain also helps the other",
                      "Training examples of a measurement's own domain have the highest influence on it, and "
                      "cross-domain examples still help (math\u2192code and code\u2192math, Fig. 2).", NOT_MEASURABLE, "")
    rows = _rows(tables.get("finding1_in_vs_cross_domain"))
    if not rows:
        finding.why = "no measurement is named after a training domain, so in-domain vs cross-domain is undefined."
        return finding
    signs, raw = [], []
    for row in rows:
        raw.append(_sign(row))
        signs.append(_robust_sign(row))
        finding.measured.append(
            f"{row['measurement']} measurement: {row['in_domain']} data {fmt(row['mean_in'])} vs {row['other_domain']} "
            f"data {fmt(row['mean_other'])}; difference {interval(row, 'difference')} (per token "
            f"{interval(row, 'difference_per_token')}).")
        note = _length_note(row, f"{row['measurement']}: in- vs cross-domain")
        if note:
            finding.caveats.append(note)
    by_domain = tables.get("by_domain")
    transfer = []
    for row in rows:
        if by_domain is None:
            break
        match = by_domain[(by_domain["domain"] == row["other_domain"]) & (by_domain["measurement"] == row["measurement"])]
        if len(match):
            other = match.iloc[0].to_dict()
            positive = other.get("mean_ci_low", math.nan) > 0
            transfer.append(positive)
            finding.measured.append(
                f"transfer {row['other_domain']}\u2192{row['measurement']}: mean {interval(other, 'mean')}, "
                f"{fmt(100 * other['share_positive'])}% of examples positive"
                + (" (helps)" if positive else " (not shown to help)") + ".")
    if all(s > 0 for s in signs):
        finding.verdict, finding.why = HOLDS, "in-domain examples score higher on every measurement (CI above 0)."
        if transfer and not all(transfer):
            finding.verdict, finding.why = PARTLY, finding.why + " Cross-domain help is not shown for every pair."
    elif any(s < 0 for s in signs):
        finding.verdict, finding.why = NOT, "on at least one measurement cross-domain examples score higher (CI below 0)."
    else:
        finding.verdict, finding.why = NOT_SIGNIFICANT, "the in- vs cross-domain CI includes 0 on at least one measurement."
    finding.why += _raw_only(raw, signs)
    return finding


# ------------------------------------------------------------------------------------ Finding 2


def _finding2(tables: Mapping[str, pd.DataFrame]) -> Finding:
    finding = Finding(2, "Hard math and easy code help most",
                      "Difficult math problems and easy code problems are the most influential (Figs. 3 and 5), "
                      "which the difficulty flip then exploits (Table 1).", NOT_MEASURABLE, "")
    rows = _rows(tables.get("finding2_difficulty_contrast"))
    if not rows:
        finding.why = "no training domain has two or more difficulty levels (data.difficulty gives none)."
        return finding
    agree, raw_signs, robust_signs, length_domains = [], [], [], []
    for row in rows:
        expected = PAPER_DIFFICULTY.get(row["domain"])
        sign = _robust_sign(row)
        raw_signs.append(_sign(row))
        robust_signs.append(sign)
        direction = "higher" if sign > 0 else "lower" if sign < 0 else "not different"
        finding.measured.append(
            f"{row['domain']} data on the {row['measurement']} measurement: levels {row['high_levels']} vs "
            f"{row['low_levels']} differ by {interval(row, 'difference')} (per token {interval(row, 'difference_per_token')}): "
            f"hard {row['domain']} is {direction}.")
        if expected is not None and sign != 0:
            agree.append((sign > 0) == (expected == "high"))
        source = str(row.get("difficulty_source") or "")
        if "length_quantile" in source and row["domain"] not in length_domains:
            length_domains.append(row["domain"])
            finding.caveats.append(f"{row['domain']}: some or all levels are trace-length quintiles (difficulty = length "
                                   f"quintile; sources: {source}), so for those examples this is a finding about length.")
        note = _length_note(row, f"{row['domain']} on {row['measurement']}")
        if note:
            finding.caveats.append(note)
    if not agree:
        finding.verdict, finding.why = NOT_SIGNIFICANT, "no high-vs-low difference is significant."
    elif all(agree) and len(agree) == len(rows):
        finding.verdict, finding.why = HOLDS, "every contrast goes the paper's way (CI excludes 0)."
    elif all(agree):
        finding.verdict, finding.why = PARTLY, "the significant contrasts go the paper's way; the others include 0."
    elif not any(agree):
        finding.verdict, finding.why = NOT, "the significant contrasts go against the paper."
    else:
        finding.verdict, finding.why = PARTLY, "some significant contrasts go the paper's way, some against it."
    finding.why += _raw_only(raw_signs, robust_signs)
    return finding


# ------------------------------------------------------------------------------------ Finding 3


def _finding3(tables: Mapping[str, pd.DataFrame], weak_behaviours: list[str]) -> Finding:
    finding = Finding(3, "Exploration after the answer helps (more than verification)",
                      "Removing post-answer exploration lowers the influence of a trace on both math and code, more "
                      "than removing verification (Table 2 left; Fig. 6).", NOT_MEASURABLE, "")
    order = ["exploration", "verification", "exploration+verification", "backtracking", "subgoal_setting", "backward_chaining"]
    removal = sorted(_rows(tables.get("behaviour_removal")),
                     key=lambda r: (order.index(r["removed"]) if r["removed"] in order else len(order), str(r["measurement"])))
    behaviours = _rows(tables.get("behaviours"))
    if not removal and not behaviours:
        finding.why = "no behaviour labels (tagger: none) or no sentence scores of tagged traces."
        return finding
    exploration = {}
    for row in removal:
        change = interval(row, "mean_removal") if row["n_examples"] > 1 else f"{fmt(row['mean_removal'])} (one example: no interval)"
        finding.measured.append(
            f"S(z) \u2212 S(z without its {row['removed']} sentences), top {row['n_examples']} examples showing it "
            f"({fmt(row['mean_sentences_removed'])} sentences each), {row['measurement']} measurement: {change} "
            f"(additive approximation {fmt(row['mean_removal_additive'])}; positive: the sentences help).")
        if row["removed"] == "exploration" and row["n_examples"] >= MIN_EXAMPLES:
            exploration[row["measurement"]] = _sign(row, "mean_removal")
        elif row["removed"] == "exploration":
            finding.caveats.append(f"exploration's removal on {row['measurement']} rests on {row['n_examples']} example(s), "
                                   f"fewer than {MIN_EXAMPLES}: not used for the verdict (raise sentence_top_k).")
    for row in behaviours:
        if row["behaviour"] in ("exploration", "verification"):
            finding.measured.append(
                f"examples with vs without {row['behaviour']} ({row['n_with']} vs {row['n_without']}), {row['measurement']}: "
                f"difference {interval(row, 'difference')}, length-adjusted {interval(row, 'difference_length_adjusted')}.")
        note = _length_note(row, f"{row['behaviour']} on {row['measurement']}")
        if note:
            finding.caveats.append(note)
    if weak_behaviours:
        finding.caveats.append(f"labels of {', '.join(weak_behaviours)} have low measured accuracy: indicative only.")
    if not exploration:  # no removal scores: the instance-level with/without comparison is the evidence left
        exploration = {r["measurement"]: _robust_sign(r) for r in behaviours if r["behaviour"] == "exploration"}
        basis = " (from examples with vs without exploration: no removal scores)"
    else:
        basis = ""
    if not exploration:
        finding.verdict = NOT_MEASURABLE
        finding.why = "no training example shows post-answer exploration."
        return finding
    if all(s > 0 for s in exploration.values()):
        finding.verdict, finding.why = HOLDS, "exploration carries positive influence on every measurement (CI above 0)."
    elif any(s < 0 for s in exploration.values()):
        finding.verdict, finding.why = NOT, "exploration carries negative influence on some measurement (CI below 0)."
    elif any(s > 0 for s in exploration.values()):
        finding.verdict, finding.why = PARTLY, "exploration's influence is significant on some measurements only."
    else:
        finding.verdict, finding.why = NOT_SIGNIFICANT, "the CI of exploration's influence includes 0."
    finding.why += basis
    return finding


# ------------------------------------------------------------------------------------ Finding 4


def _finding4(tables: Mapping[str, pd.DataFrame]) -> Finding:
    finding = Finding(4, "Math traces are driven by logical connectors, code traces by syntax",
                      "The top 5% tokens are natural-language logical connectors in math traces and structural/syntax "
                      "markers in code traces (Fig. 7).", NOT_MEASURABLE, "")
    table = tables.get("token_classes")
    if table is None or table.empty:
        finding.why = "no token scores (InfluenceScores token_top_k: 0)."
        return finding
    results = []
    for (measurement, domain), part in table.groupby(["measurement", "domain"], sort=True):
        ranked = part.sort_values("share_top", ascending=False)
        top = ranked.iloc[0].to_dict()
        enriched = part.assign(e=part["enrichment"]).sort_values("e", ascending=False).iloc[0].to_dict()
        finding.measured.append(
            f"{domain} traces, {measurement} measurement ({int(top['n_examples'])} examples): most top-5% tokens are "
            f"{top['token_class']} ({fmt(100 * top['share_top'])}% [{fmt(100 * top['share_top_ci_low'])}, "
            f"{fmt(100 * top['share_top_ci_high'])}]); most over-represented: {enriched['token_class']} "
            f"({fmt(enriched['enrichment'])}\u00d7 its share of all tokens).")
        expected = PAPER_TOKENS.get(domain)
        if expected is not None:
            results.append(enriched["token_class"] in expected or top["token_class"] in expected)
    missing = [d for d in PAPER_TOKENS if d not in set(table["domain"])]
    if missing:
        finding.caveats.append(f"no {' or '.join(missing)} traces among the token-scored examples: the math-vs-code "
                               "contrast is half measured.")
    if not results:
        finding.why = "no math or code training traces among the token-scored examples."
    elif all(results) and not missing:
        finding.verdict, finding.why = HOLDS, "the leading token class matches the paper in every domain."
    elif all(results):
        finding.verdict, finding.why = PARTLY, "the leading token class matches the paper in the domain measured."
    elif any(results):
        finding.verdict, finding.why = PARTLY, "the leading token class matches the paper in some domains only."
    else:
        finding.verdict, finding.why = NOT, "the leading token classes differ from the paper's."
    finding.caveats.append("token scores exist only for the top examples per measurement; shares describe those.")
    return finding


def build_findings(tables: Mapping[str, pd.DataFrame], weak_behaviours: list[str] | None = None) -> list[Finding]:
    """Findings 1-4 from the report's tables (missing tables give 'not measurable here', with why)."""
    return [_finding1(tables), _finding2(tables), _finding3(tables, list(weak_behaviours or [])), _finding4(tables)]
