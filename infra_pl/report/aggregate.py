"""Tables of influence scores grouped the way the paper reads them (§4.2-§4.3).

* :func:`group_summary` - any grouping (domain, category, difficulty, or several columns):
  Figures 3 and 5 are bar charts of its ``mean`` column.
* :func:`cross_domain_table` - training domain x measurement (Findings 1-2: does code data help
  math, and math data help code?).
* :func:`domain_difficulty_table` - domain x difficulty x measurement, the table users read first
  (Finding 2: hard math and easy code help most).
* :func:`behaviour_summary` - examples with vs without a cognitive behaviour (Figure 6, right).
* :func:`sentence_behaviour_summary` - sentence removal scores (Eq. 7) per behaviour label
  (Table 2, left), each label compared with unlabelled sentences.
* :func:`in_vs_cross_domain_table` - Finding 1 as a comparison: in-domain minus cross-domain
  training examples, per measurement.
* :func:`difficulty_contrast_table` - Finding 2 as a comparison: hard minus easy levels, per
  training domain and measurement.

Length fairness (:mod:`infra_pl.report.length`): S(z) is a sum over target tokens, so every table
keeps the raw sums the paper reports and adds the mean per-token score S(z)/n_target_tokens with a
CI; every comparison (with vs without, A vs B) adds the CI of its difference, the per-token and the
length-adjusted difference with CIs, and a ``length_driven`` flag for a raw finding that does not
survive the length adjustment.

All functions are plain pandas/numpy (no Lightning) and return tidy DataFrames, so a callback can
log them, :func:`write_tables` can save them, and the HTML/Markdown reports can render them.
Intervals come from :mod:`infra_pl.report.bootstrap` (seeded, reproducible).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from infra_pl.data.schema import BEHAVIOURS
from infra_pl.report.bootstrap import STATISTICS, describe
from infra_pl.report.length import (
    COMPARISON_STATISTICS,
    LENGTH_COLUMN,
    N_STRATA,
    compare,
    length_strata,
    per_token,
    token_counts,
)
from infra_pl.report.validate import (
    ReportInputError,
    behaviour_columns,
    require_columns,
    require_finite,
    resolve_measurements,
    score_column,
)

__all__ = [
    "PER_TOKEN_STATISTICS",
    "SENTENCE_COLUMNS",
    "UNLABELLED",
    "behaviour_summary",
    "cross_domain_table",
    "difficulty_contrast_table",
    "domain_difficulty_table",
    "group_summary",
    "in_vs_cross_domain_table",
    "sentence_behaviour_summary",
    "sentence_behaviours",
    "standard_tables",
    "without_behaviour_table",
    "write_tables",
]

UNLABELLED = "unlabelled"
SENTENCE_COLUMNS = ("id", "measurement", "sentence_index", "behaviours", "score_removal")
_INSTANCE = "instance scores"
_SENTENCE = "sentence scores"
# Added after :data:`STATISTICS` in every grouped table: mean of S(z) / n_target_tokens over the
# group's examples that have target tokens (+ CI), and how many examples had none (left out).
PER_TOKEN_STATISTICS = ("mean_per_token", "mean_per_token_ci_low", "mean_per_token_ci_high", "n_no_tokens")
# Comparison columns appended to every with-vs-without / A-vs-B table (see infra_pl.report.length).
_COMPARISON_TAIL = COMPARISON_STATISTICS[COMPARISON_STATISTICS.index("difference_per_token"):]


# --------------------------------------------------------------------------- helpers


def _int_if_integral(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Show whole-number float keys (difficulty 1.0 read from Parquet with nulls) as integers."""
    for column in columns:
        series = frame[column]
        if pd.api.types.is_float_dtype(series):
            finite = series.dropna()
            if len(finite) == len(finite[np.isfinite(finite)]) and (finite == finite.round()).all():
                frame[column] = series.astype("Int64")
    return frame


def _summarise(
    df: pd.DataFrame, keys: list[str], names: list[str], n_boot: int, seed: int, ci: float
) -> pd.DataFrame:
    """Long table: one row per (group, measurement) with :data:`STATISTICS` and
    :data:`PER_TOKEN_STATISTICS`.

    The per-token columns share the raw scores' resamples (one :func:`describe` call per group), so
    the raw statistics are exactly those of the scores alone.
    """
    columns = [score_column(m) for m in names]
    m = len(names)
    has_lengths = token_counts(df, LENGTH_COLUMN, _INSTANCE) is not None  # validates the column
    out_columns = [*keys, "measurement", *STATISTICS, *PER_TOKEN_STATISTICS]
    rows: list[dict[str, Any]] = []
    if len(df):
        for key, part in df.groupby(keys, dropna=False, sort=True, observed=True):
            key = key if isinstance(key, tuple) else (key,)
            scores = part[columns].to_numpy(dtype=float).reshape(len(part), m)
            tokens = part[LENGTH_COLUMN].to_numpy(dtype=float, na_value=np.nan) if has_lengths else None
            scores_pt, valid = per_token(scores, tokens)
            has_pt = bool(valid.any())
            if has_pt:
                stacked = np.concatenate([scores, np.nan_to_num(scores_pt)], axis=1)
                mask = np.concatenate([np.ones((len(part), m), dtype=bool), np.repeat(valid[:, None], m, axis=1)], axis=1)
                stats = describe(stacked, n_boot=n_boot, seed=seed, ci=ci, valid=mask)
            else:  # no token counts: raw statistics only
                stats = describe(scores, n_boot=n_boot, seed=seed, ci=ci)
            for j, name in enumerate(names):
                row = dict(zip(keys, key))
                row["measurement"] = name
                row.update({s: stats[s][j] for s in STATISTICS})
                row["mean_per_token"] = stats["mean"][m + j] if has_pt else math.nan
                row["mean_per_token_ci_low"] = stats["mean_ci_low"][m + j] if has_pt else math.nan
                row["mean_per_token_ci_high"] = stats["mean_ci_high"][m + j] if has_pt else math.nan
                row["n_no_tokens"] = int((~valid).sum())
                rows.append(row)
    frame = pd.DataFrame(rows, columns=out_columns)
    frame["n"] = frame["n"].astype("int64")
    frame["n_no_tokens"] = frame["n_no_tokens"].astype("int64")
    for key in keys:  # rows were built from Python values: restore the input's dtype (e.g. Int64)
        try:
            frame[key] = frame[key].astype(df[key].dtype)
        except (TypeError, ValueError):
            pass
    return _int_if_integral(frame, keys)


def _checked_instance(instance_df: pd.DataFrame, extra: Sequence[str], measurements: Sequence[str] | None) -> list[str]:
    names = resolve_measurements(instance_df, measurements, _INSTANCE)
    require_columns(instance_df, [*extra, *(score_column(m) for m in names)], _INSTANCE)
    require_finite(instance_df, [score_column(m) for m in names], _INSTANCE)
    return names


# --------------------------------------------------------------------------- instance tables


def group_summary(
    instance_df: pd.DataFrame,
    by: str | Sequence[str],
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Per group and measurement: ``n``, ``mean`` (+ CI), ``median``, ``share_positive`` (+ CI),
    then ``mean_per_token`` (+ CI: mean of S(z) / n_target_tokens over the group's examples with
    target tokens) and ``n_no_tokens`` (examples left out of it: zero or unknown token count; the
    per-token columns are NaN without an ``n_target_tokens`` column).

    ``by`` is one column name or several (e.g. ``["domain", "difficulty"]``). Rows whose key is
    null form their own group (shown last), because "no difficulty label" is information users
    need to see, not a row to drop. Groups are sorted by key; ``measurements`` defaults to every
    ``score_*`` column.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise ReportInputError("group_summary: 'by' names no column")
    names = _checked_instance(instance_df, keys, measurements)
    return _summarise(instance_df, keys, names, n_boot, seed, ci)


def cross_domain_table(
    instance_df: pd.DataFrame,
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Rows = training domain, columns = measurement: mean score with CI and share positive.

    The off-diagonal cells are the paper's cross-domain transfer (math -> code, code -> math). Wide
    on purpose: it is the one table that reads like a matrix. Columns: ``domain``, ``n``, then per
    measurement ``<m>_mean``, ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_share_positive``; after those,
    per measurement ``<m>_mean_per_token``, ``<m>_per_token_ci_low``, ``<m>_per_token_ci_high``, and
    last ``n_no_tokens`` (see :func:`group_summary`). The in-domain vs cross-domain *difference*
    with its intervals is :func:`in_vs_cross_domain_table`.
    """
    names = _checked_instance(instance_df, ["domain"], measurements)
    return _cross_domain_from_long(_summarise(instance_df, ["domain"], names, n_boot, seed, ci), names)


def _cross_domain_from_long(long: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Pivot a by-domain :func:`group_summary` into the wide cross-domain matrix."""
    domains = list(dict.fromkeys(long["domain"]))
    columns = (["domain", "n"] + [f"{m}_{s}" for m in names for s in ("mean", "ci_low", "ci_high", "share_positive")]
               + [f"{m}_{s}" for m in names for s in ("mean_per_token", "per_token_ci_low", "per_token_ci_high")]
               + ["n_no_tokens"])
    rows = []
    for domain in domains:
        part = long[long["domain"].isna()] if pd.isna(domain) else long[long["domain"] == domain]
        row: dict[str, Any] = {"domain": domain, "n": int(part["n"].iloc[0]),
                               "n_no_tokens": int(part["n_no_tokens"].iloc[0]) if "n_no_tokens" in part else math.nan}
        for _, r in part.iterrows():
            m = r["measurement"]
            row.update({f"{m}_mean": r["mean"], f"{m}_ci_low": r["mean_ci_low"],
                        f"{m}_ci_high": r["mean_ci_high"], f"{m}_share_positive": r["share_positive"],
                        f"{m}_mean_per_token": r.get("mean_per_token", math.nan),
                        f"{m}_per_token_ci_low": r.get("mean_per_token_ci_low", math.nan),
                        f"{m}_per_token_ci_high": r.get("mean_per_token_ci_high", math.nan)})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns)
    frame["n"] = frame["n"].astype("int64")
    if "n_no_tokens" in long.columns:
        frame["n_no_tokens"] = frame["n_no_tokens"].astype("int64")
    return frame


def domain_difficulty_table(
    instance_df: pd.DataFrame,
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Domain x difficulty x measurement: the long-format :func:`group_summary` over both keys.

    Read a row as "training data of <domain> at level <difficulty> -> measurement" (Figure 5's
    "Math->Code"). Examples without a difficulty label appear as a null-difficulty row per domain.
    """
    return group_summary(instance_df, ["domain", "difficulty"], measurements, n_boot=n_boot, seed=seed, ci=ci)


def behaviour_summary(
    instance_df: pd.DataFrame,
    behaviours: Sequence[str] | None = None,
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    n_strata: int = N_STRATA,
) -> pd.DataFrame:
    """Per behaviour and measurement: examples that show it (count > 0) vs examples that do not.

    Columns: ``behaviour``, ``measurement``, ``n_with``, ``share_of_examples`` (prevalence, Figure
    6's distribution), ``mean_with`` (+ ``_ci_low``/``_ci_high``), ``share_positive_with``, the same
    ``*_without``, and ``difference`` = mean_with - mean_without. Then the comparison columns:

    * ``difference_ci_low``/``_high``: two-sample bootstrap CI of the difference (each side
      resampled independently);
    * ``mean_per_token_with``/``_without``, ``difference_per_token`` (+ CI): the same on
      S(z) / n_target_tokens;
    * ``difference_length_adjusted`` (+ CI): with minus without among examples of similar length
      (``n_strata`` length quantiles within each domain, within-stratum length slope removed,
      strata weighted by size), ``adjusted_coverage`` the share of examples in strata holding both
      sides, ``n_no_tokens`` examples without a token count (left out of both);
    * ``length_driven``: the raw CI excludes 0 but the length-adjusted one does not (on the same
      side) - the raw difference may be a length difference (NA without token counts).

    A behaviour no example shows has no row (a "with" side of nothing is not a statistic); its name
    is in ``attrs["not_observed"]``. Untagged examples (null counts) and a table where no example
    shows any behaviour are errors: both mean nothing was measured.
    """
    mapping = behaviour_columns(instance_df, behaviours, _INSTANCE)
    names = _checked_instance(instance_df, list(mapping.values()), measurements)
    untagged = int(instance_df[list(mapping.values())].isna().any(axis=1).sum())
    if untagged:
        raise ReportInputError(
            f"{_INSTANCE}: {untagged} of {len(instance_df)} examples have no behaviour counts (never tagged); "
            "tag the traces (InfluenceScores tagger: rules or an LLM judge) before comparing behaviours"
        )
    require_finite(instance_df, list(mapping.values()), _INSTANCE)
    shown = {b: c for b, c in mapping.items() if (instance_df[c].to_numpy(dtype=float) > 0).any()}
    if not shown:
        raise ReportInputError(
            f"{_INSTANCE}: no example shows any of the behaviours {sorted(mapping)}: a behaviour table would be empty. "
            "Check the tagger on a few traces or leave behaviours out (tagger: none)"
        )
    not_observed = [b for b in mapping if b not in shown]
    mapping = shown
    scores = _score_matrix(instance_df, names)
    tokens = token_counts(instance_df, LENGTH_COLUMN, _INSTANCE)
    strata = length_strata(tokens, n_strata, instance_df["domain"] if "domain" in instance_df.columns else None)
    rows = []
    for behaviour, count_column in mapping.items():
        present = instance_df[count_column].to_numpy(dtype=float) > 0
        with_ = describe(scores[present], n_boot=n_boot, seed=seed, ci=ci)
        without = describe(scores[~present], n_boot=n_boot, seed=seed, ci=ci)
        versus = compare(scores, present, tokens, strata, n_boot=n_boot, seed=seed, ci=ci)
        for j, name in enumerate(names):
            rows.append({
                "behaviour": behaviour,
                "measurement": name,
                "n_with": int(present.sum()),
                "share_of_examples": float(present.mean()) if len(present) else math.nan,
                "mean_with": with_["mean"][j],
                "mean_with_ci_low": with_["mean_ci_low"][j],
                "mean_with_ci_high": with_["mean_ci_high"][j],
                "share_positive_with": with_["share_positive"][j],
                "n_without": int((~present).sum()),
                "mean_without": without["mean"][j],
                "mean_without_ci_low": without["mean_ci_low"][j],
                "mean_without_ci_high": without["mean_ci_high"][j],
                "share_positive_without": without["share_positive"][j],
                "difference": with_["mean"][j] - without["mean"][j],
                **_comparison_columns(versus, j, "with", "without"),
            })
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["length_driven"] = frame["length_driven"].astype("boolean")
    frame.attrs["not_observed"] = not_observed
    return frame


def _comparison_columns(versus: Mapping[str, Any], j: int, a: str, b: str, full: bool = False) -> dict[str, Any]:
    """Column ``j`` of a :func:`~infra_pl.report.length.compare` result as table columns, sides
    renamed (``mean_per_token_a`` -> ``mean_per_token_<a>``). ``full`` adds the sides' sizes and
    means and the raw difference (tables that do not compute them otherwise)."""
    out: dict[str, Any] = {}
    if full:
        out.update({f"n_{a}": int(versus["n_a"][j]), f"n_{b}": int(versus["n_b"][j]),
                    f"mean_{a}": versus["mean_a"][j], f"mean_{b}": versus["mean_b"][j],
                    "difference": versus["difference"][j]})
    out.update({"difference_ci_low": versus["difference_ci_low"][j],
                "difference_ci_high": versus["difference_ci_high"][j],
                f"mean_per_token_{a}": versus["mean_per_token_a"][j],
                f"mean_per_token_{b}": versus["mean_per_token_b"][j]})
    for name in _COMPARISON_TAIL:
        value = versus[name][j]
        out[name] = int(value) if name == "n_no_tokens" else value
    return out


def _flipped(versus: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison B - A from A - B: sides swapped, differences negated, intervals mirrored."""
    out = dict(versus)
    for a_name, b_name in (("n_a", "n_b"), ("mean_a", "mean_b"), ("mean_per_token_a", "mean_per_token_b")):
        out[a_name], out[b_name] = versus[b_name], versus[a_name]
    for stem in ("difference", "difference_per_token", "difference_length_adjusted"):
        out[stem] = -np.asarray(versus[stem])
        out[f"{stem}_ci_low"], out[f"{stem}_ci_high"] = -np.asarray(versus[f"{stem}_ci_high"]), -np.asarray(versus[f"{stem}_ci_low"])
    return out


def _sorted_values(values: Sequence[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _level_text(levels: Sequence[Any]) -> str:
    def one(v: Any) -> str:
        if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()):
            return str(int(v))
        return str(v)
    return ",".join(one(v) for v in levels)


def _score_matrix(instance_df: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """The scores of the ``names`` measurements, one column each: [examples, measurements]."""
    return instance_df[[score_column(m) for m in names]].to_numpy(dtype=float).reshape(len(instance_df), len(names))


def _compare_rows(
    scores: np.ndarray, tokens: np.ndarray | None, rows_used: np.ndarray, is_a: np.ndarray, n_strata: int,
    n_boot: int, seed: int, ci: float,
) -> dict[str, Any]:
    """:func:`compare` of group A against the rest of ``rows_used``, length strata from those rows' tokens."""
    sub_tokens = None if tokens is None else tokens[rows_used]
    return compare(scores[rows_used], is_a[rows_used], sub_tokens, length_strata(sub_tokens, n_strata),
                   n_boot=n_boot, seed=seed, ci=ci)


def _comparison_frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns:
        if column.startswith("n_"):
            frame[column] = frame[column].astype("int64")
    frame["length_driven"] = frame["length_driven"].astype("boolean")
    return frame


def in_vs_cross_domain_table(
    instance_df: pd.DataFrame,
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    n_strata: int = N_STRATA,
) -> pd.DataFrame:
    """Finding 1 as a comparison: in-domain minus cross-domain training examples, per measurement.

    A measurement is named after its evaluation domain (``math``, ``code``); its in-domain examples
    are the training examples of that domain, and each other training domain gives one row
    (``other_domain``). Columns: ``measurement``, ``in_domain``, ``other_domain``, ``n_in``,
    ``n_other``, ``mean_in``, ``mean_other``, ``difference`` (= mean_in - mean_other) with its
    two-sample bootstrap CI, the per-token means and difference (+ CI), the length-adjusted
    difference (+ CI; length strata are quantiles over the two domains' examples pooled, since the
    domain is what is compared), ``adjusted_coverage``, ``n_no_tokens`` and ``length_driven``
    (see :func:`behaviour_summary`). A positive difference with a CI above 0 says in-domain data
    helps more; whether cross-domain data helps at all is the sign of ``cross_domain``'s means.
    Measurements that match no training domain have no rows; their names are in
    ``attrs["skipped"]``.
    """
    names = _checked_instance(instance_df, ["domain"], measurements)
    tokens = token_counts(instance_df, LENGTH_COLUMN, _INSTANCE)
    scores = _score_matrix(instance_df, names)
    domain = np.array([None if pd.isna(v) else str(v) for v in instance_df["domain"]], dtype=object)
    domains = _sorted_values({d for d in domain if d is not None})
    columns = ["measurement", "in_domain", "other_domain", "n_in", "n_other", "mean_in", "mean_other", "difference",
               "difference_ci_low", "difference_ci_high", "mean_per_token_in", "mean_per_token_other",
               *_COMPARISON_TAIL]
    cache: dict[tuple[str, str], dict[str, Any]] = {}
    rows = []
    for j, name in enumerate(names):
        if name not in domains:
            continue
        for other in domains:
            if other == name:
                continue
            pair = (min(name, other), max(name, other))
            if pair not in cache:  # one bootstrap per pair of domains serves both directions
                rows_used = (domain == pair[0]) | (domain == pair[1])
                cache[pair] = _compare_rows(scores, tokens, rows_used, domain == pair[0], n_strata, n_boot, seed, ci)
            versus = cache[pair] if name == pair[0] else _flipped(cache[pair])
            row = {"measurement": name, "in_domain": name, "other_domain": other}
            row.update(_comparison_columns(versus, j, "in", "other", full=True))
            rows.append(row)
    frame = _comparison_frame(rows, columns)
    frame.attrs["skipped"] = [m for m in names if m not in domains]
    return frame


def difficulty_contrast_table(
    instance_df: pd.DataFrame,
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    n_strata: int = N_STRATA,
) -> pd.DataFrame:
    """Finding 2 as a comparison: hard minus easy training examples, per training domain and measurement.

    Within a domain with k >= 2 distinct difficulty levels, "low" is the lowest ``k // 2`` levels
    and "high" the highest ``k // 2`` (MATH 1-5: levels 4-5 vs 1-2, the paper's reading of Fig.
    3b; easy/medium/hard: hard vs easy); a middle level is left out. Examples without a level are
    left out. Columns: ``domain``, ``measurement``, ``difficulty_source`` (where the levels came
    from; ``length_quantile`` levels *are* trace length, so expect ``length_driven``), ``low_levels``,
    ``high_levels``, ``n_low``, ``n_high``, ``mean_low``, ``mean_high``, ``difference`` (= mean_high
    - mean_low) with its two-sample bootstrap CI, the per-token means and difference (+ CI), the
    length-adjusted difference (+ CI; length quantiles within the domain), ``adjusted_coverage``,
    ``n_no_tokens`` and ``length_driven`` (see :func:`behaviour_summary`). Domains with fewer than
    two levels have no rows; their names are in ``attrs["skipped"]``.
    """
    names = _checked_instance(instance_df, ["domain", "difficulty"], measurements)
    tokens = token_counts(instance_df, LENGTH_COLUMN, _INSTANCE)
    scores = _score_matrix(instance_df, names)
    difficulty = instance_df["difficulty"]
    has_level = difficulty.notna().to_numpy(dtype=bool)
    level_values = difficulty.astype(object).to_numpy(dtype=object)
    sources = instance_df["difficulty_source"].to_numpy(dtype=object) if "difficulty_source" in instance_df.columns else None
    columns = ["domain", "measurement", "difficulty_source", "low_levels", "high_levels", "n_low", "n_high",
               "mean_low", "mean_high", "difference", "difference_ci_low", "difference_ci_high",
               "mean_per_token_low", "mean_per_token_high", *_COMPARISON_TAIL]
    rows, skipped = [], []
    for d in _sorted_values(set(instance_df.loc[instance_df["domain"].notna(), "domain"])):
        in_domain = (instance_df["domain"] == d).to_numpy(dtype=bool, na_value=False) & has_level
        levels = _sorted_values(set(level_values[in_domain]))
        if len(levels) < 2:
            skipped.append(d)
            continue
        half = len(levels) // 2
        low, high = levels[:half], levels[-half:]
        is_high = np.zeros(len(instance_df), dtype=bool)
        is_low = np.zeros(len(instance_df), dtype=bool)
        is_high[in_domain] = [v in high for v in level_values[in_domain]]
        is_low[in_domain] = [v in low for v in level_values[in_domain]]
        rows_used = is_high | is_low
        versus = _compare_rows(scores, tokens, rows_used, is_high, n_strata, n_boot, seed, ci)
        source = None
        if sources is not None:
            found = sorted({str(v) for v in sources[rows_used] if v is not None and not pd.isna(v)})
            source = "+".join(found) if found else None
        for j, name in enumerate(names):
            row = {"domain": d, "measurement": name, "difficulty_source": source,
                   "low_levels": _level_text(low), "high_levels": _level_text(high)}
            row.update(_comparison_columns(versus, j, "high", "low", full=True))
            rows.append(row)
    frame = _comparison_frame(rows, columns)
    frame.attrs["skipped"] = skipped
    return frame


# --------------------------------------------------------------------------- sentence tables


def sentence_behaviours(value: Any) -> list[str]:
    """Behaviour labels of one sentence row as a list, whatever the storage gave us.

    Parquet returns a numpy array, JSON a list, CSV a string such as ``"['exploration']"`` or
    ``"verification,exploration"``; null and empty mean unlabelled.
    """
    if value is None:
        return []
    if isinstance(value, float) and math.isnan(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                parsed = json.loads(text.replace("'", '"'))
                return [str(v) for v in parsed]
            except json.JSONDecodeError:
                text = text.strip("[]")
        return [part.strip().strip("'\"") for part in re.split(r"[,;|]", text) if part.strip().strip("'\"")]
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [str(v) for v in value if v is not None and not (isinstance(v, float) and math.isnan(v))]
    raise ReportInputError(f"{_SENTENCE}: 'behaviours' must be a list of names, got {type(value).__name__}: {value!r}")


def _checked_sentences(sentence_df: pd.DataFrame, score: str, measurements: Sequence[str] | None) -> pd.DataFrame:
    require_columns(sentence_df, ["id", "measurement", "behaviours", score], _SENTENCE)
    require_finite(sentence_df, [score], _SENTENCE)
    if measurements is not None:
        wanted = [measurements] if isinstance(measurements, str) else list(measurements)
        wanted = [m[len("score_"):] if m.startswith("score_") else m for m in wanted]
        missing = sorted(set(wanted) - set(sentence_df["measurement"].astype(str)))
        if missing:
            raise ReportInputError(f"{_SENTENCE}: no rows for measurement(s) {missing}")
        sentence_df = sentence_df[sentence_df["measurement"].astype(str).isin(wanted)]
    return sentence_df


def _label_order(labels: Sequence[str]) -> list[str]:
    known = [b for b in BEHAVIOURS if b in labels]
    others = sorted(set(labels) - set(BEHAVIOURS) - {UNLABELLED})
    return known + others + ([UNLABELLED] if UNLABELLED in labels else [])


def sentence_behaviour_summary(
    sentence_df: pd.DataFrame,
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    score: str = "score_removal",
    n_strata: int = N_STRATA,
) -> pd.DataFrame:
    """Mean sentence removal score (Eq. 7) per behaviour label and measurement, with CIs.

    A sentence with several labels counts once for each; sentences without labels form the
    ``unlabelled`` row, the baseline a behaviour should be compared with. Sentence scores exist only
    for the examples the sentence pass scored (the top-K per measurement), so this describes those
    examples, not the whole training set. ``mean_token_sum`` (when ``score_token_sum`` is present) is
    the cheap token-sum approximation of the same quantity, for comparison.

    Added columns: ``mean_per_token`` (+ CI; removal score / the sentence's ``n_tokens``, NaN
    without that column), then each label compared with the ``unlabelled`` sentences of the same
    measurement: ``difference`` (= mean - unlabelled mean) with its two-sample bootstrap CI,
    ``difference_per_token`` (+ CI), ``difference_length_adjusted`` (+ CI; sentence-length quantiles
    within the measurement), ``adjusted_coverage``, ``n_no_tokens``, ``length_driven`` (see
    :func:`behaviour_summary`); NaN/NA on the ``unlabelled`` row itself and when a measurement has
    no unlabelled sentence. The intervals resample sentences, not examples: sentences of one trace
    are not independent, so read them as lower bounds on the uncertainty.
    """
    sentences = _checked_sentences(sentence_df, score, measurements)
    lengths = token_counts(sentences, "n_tokens", _SENTENCE)
    labels = sentences["behaviours"].map(sentence_behaviours)
    labels = labels.map(lambda names: names if names else [UNLABELLED])
    extra = {}
    if lengths is not None:  # strata of sentence length within each measurement
        extra = {"_tokens": lengths, "_stratum": length_strata(lengths, n_strata, sentences["measurement"].astype(str))}
    exploded = sentences.assign(behaviour=labels, **extra).explode("behaviour")
    has_token_sum = "score_token_sum" in exploded.columns
    columns = ["behaviour", "measurement", "n_sentences", "n_examples", *STATISTICS[1:]]
    if has_token_sum:
        columns.append("mean_token_sum")
    columns += ["mean_per_token", "mean_per_token_ci_low", "mean_per_token_ci_high",
                "difference", "difference_ci_low", "difference_ci_high", *_COMPARISON_TAIL]
    rows = []
    for measurement in dict.fromkeys(exploded["measurement"].astype(str)):
        part_m = exploded[exploded["measurement"].astype(str) == measurement]
        baseline = part_m[part_m["behaviour"] == UNLABELLED]
        for label in _label_order(list(set(part_m["behaviour"]))):
            part = part_m[part_m["behaviour"] == label]
            values = part[score].to_numpy(dtype=float)
            tokens = part["_tokens"].to_numpy(dtype=float) if lengths is not None else None
            values_pt, valid = per_token(values, tokens)
            stats = describe(np.column_stack([values, np.nan_to_num(values_pt)]), n_boot=n_boot, seed=seed, ci=ci,
                             valid=np.column_stack([np.ones(len(part), dtype=bool), valid]))
            row: dict[str, Any] = {"behaviour": label, "measurement": measurement,
                                   "n_sentences": len(part), "n_examples": part["id"].nunique()}
            row.update({s: stats[s][0] for s in STATISTICS[1:]})
            if has_token_sum:
                row["mean_token_sum"] = float(np.nanmean(part["score_token_sum"].to_numpy(dtype=float))) if len(part) else math.nan
            row.update({"mean_per_token": stats["mean"][1], "mean_per_token_ci_low": stats["mean_ci_low"][1],
                        "mean_per_token_ci_high": stats["mean_ci_high"][1]})
            if label != UNLABELLED and len(baseline):
                both = pd.concat([part, baseline])
                both_tokens = both["_tokens"].to_numpy(dtype=float) if lengths is not None else None
                both_strata = both["_stratum"].to_numpy(dtype=np.int64) if lengths is not None else None
                versus = compare(both[score].to_numpy(dtype=float), np.arange(len(both)) < len(part), both_tokens,
                                 both_strata, n_boot=n_boot, seed=seed, ci=ci)
                comparison = _comparison_columns(versus, 0, "a", "b", full=True)
                row.update({c: comparison[c] for c in ("difference", "difference_ci_low", "difference_ci_high",
                                                       *_COMPARISON_TAIL)})
            else:
                row.update({c: math.nan for c in ("difference", "difference_ci_low", "difference_ci_high",
                                                  *_COMPARISON_TAIL)})
                row["n_no_tokens"] = int((~valid).sum())
                row["length_driven"] = pd.NA
            rows.append(row)
    frame = pd.DataFrame(rows, columns=columns)
    frame["n_no_tokens"] = frame["n_no_tokens"].astype("int64")
    frame["length_driven"] = frame["length_driven"].astype("boolean")
    return frame


def without_behaviour_table(sentence_rows: pd.DataFrame, full_score: float, score: str = "score_removal") -> pd.DataFrame:
    """For one example and measurement: its score with each behaviour's sentences taken out.

    Mirrors Table 2 (left: full CoT vs w/o verification / exploration) under an additive
    approximation: S(z without all sentences of b) ~= S(z) - sum of their removal scores. The
    removals interact (later tokens lose context twice), so the exact joint removal differs;
    the column name says ``approx``.
    """
    require_columns(sentence_rows, ["behaviours", score], _SENTENCE)
    labels = sentence_rows["behaviours"].map(sentence_behaviours)
    rows = []
    for label in _label_order(sorted({b for names in labels for b in names})):
        mask = labels.map(lambda names, label=label: label in names).to_numpy(dtype=bool)
        removed = float(sentence_rows.loc[mask, score].sum())
        rows.append({"behaviour": label, "n_sentences": int(mask.sum()),
                     "sum_removal": removed, "score_without_approx": full_score - removed})
    return pd.DataFrame(rows, columns=["behaviour", "n_sentences", "sum_removal", "score_without_approx"])


# --------------------------------------------------------------------------- bundles and files


def standard_tables(
    instance_df: pd.DataFrame,
    sentence_df: pd.DataFrame | None = None,
    measurements: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    n_strata: int = N_STRATA,
) -> dict[str, pd.DataFrame]:
    """The tables the report shows, keyed by file name, most-read first.

    Optional inputs are skipped rather than failing: no ``category`` column -> no category table,
    no behaviour counts -> no behaviour table, no sentence scores -> no sentence table, no training
    domain named like a measurement -> no ``finding1_in_vs_cross_domain``, no domain with two
    difficulty levels -> no ``finding2_difficulty_contrast`` (these two come last). Cost is about
    ``n_boot`` x N x (6 + 3 x number of behaviours) resampled rows, all measurements at once
    (N = training examples; 17k examples, 2 measurements, 5 behaviours, n_boot 2000: about half a
    minute on one core); lower ``n_boot`` for a quick look at a very large set.
    """
    kw = {"measurements": measurements, "n_boot": n_boot, "seed": seed, "ci": ci}
    tables: dict[str, pd.DataFrame] = {}
    if "difficulty" in instance_df.columns and instance_df["difficulty"].notna().any():  # all-null: nothing to compare
        tables["domain_difficulty"] = domain_difficulty_table(instance_df, **kw)
    by_domain = group_summary(instance_df, "domain", **kw)
    names = list(dict.fromkeys(by_domain["measurement"])) or resolve_measurements(instance_df, measurements)
    tables["cross_domain"] = _cross_domain_from_long(by_domain, names)  # same numbers, no second bootstrap
    tables["by_domain"] = by_domain
    if "category" in instance_df.columns:
        tables["by_category"] = group_summary(instance_df, ["domain", "category"], **kw)
    if any(str(c).startswith("behaviour_") for c in instance_df.columns):
        tables["behaviours"] = behaviour_summary(instance_df, **kw, n_strata=n_strata)
    if sentence_df is not None and len(sentence_df):
        tables["sentence_behaviours"] = sentence_behaviour_summary(sentence_df, **kw, n_strata=n_strata)
    finding1 = in_vs_cross_domain_table(instance_df, **kw, n_strata=n_strata)
    if len(finding1):
        tables["finding1_in_vs_cross_domain"] = finding1
    if "domain_difficulty" in tables:
        finding2 = difficulty_contrast_table(instance_df, **kw, n_strata=n_strata)
        if len(finding2):
            tables["finding2_difficulty_contrast"] = finding2
    return tables


def _jsonable(value: Any) -> Any:
    """A JSON-safe Python value: NaN/inf/NA -> None, numpy scalars -> Python, arrays -> lists."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (np.ndarray, list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    return str(value)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def write_tables(out_dir: str | Path, tables: Mapping[str, pd.DataFrame]) -> dict[str, dict[str, Path]]:
    """Write each table as ``<name>.csv`` and ``<name>.json`` (a list of records, NaN -> null).

    Why both: CSV opens in a spreadsheet; JSON is strict (no NaN tokens, which many JSON readers
    reject) for scripts and dashboards. Returns ``{name: {"csv": path, "json": path}}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Path]] = {}
    for name, table in tables.items():
        if not _SAFE_NAME.match(name) or name in {".", ".."}:
            raise ReportInputError(f"table name {name!r} is not a safe file name (letters, digits, _ . -)")
        if not isinstance(table, pd.DataFrame):
            raise ReportInputError(f"table {name!r}: expected a DataFrame, got {type(table).__name__}")
        csv_path, json_path = out / f"{name}.csv", out / f"{name}.json"
        table.to_csv(csv_path, index=False)
        records = [{str(k): _jsonable(v) for k, v in zip(table.columns, row)} for row in table.itertuples(index=False, name=None)]
        json_path.write_text(json.dumps(records, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        written[name] = {"csv": csv_path, "json": json_path}
    return written
