"""Tables of influence scores grouped the way the paper reads them (§4.2-§4.3).

* :func:`group_summary` - any grouping (domain, category, difficulty, or several columns):
  Figures 3 and 5 are bar charts of its ``mean`` column.
* :func:`cross_domain_table` - training domain x measurement (Findings 1-2: does code data help
  math, and math data help code?).
* :func:`domain_difficulty_table` - domain x difficulty x measurement, the table users read first
  (Finding 2: hard math and easy code help most).
* :func:`behaviour_summary` - examples with vs without a cognitive behaviour (Figure 6, right).
* :func:`sentence_behaviour_summary` - sentence removal scores (Eq. 7) per behaviour label
  (Table 2, left).

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
from infra_pl.report.validate import (
    ReportInputError,
    behaviour_columns,
    require_columns,
    require_finite,
    resolve_measurements,
    score_column,
)

__all__ = [
    "SENTENCE_COLUMNS",
    "UNLABELLED",
    "behaviour_summary",
    "cross_domain_table",
    "domain_difficulty_table",
    "group_summary",
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
    """Long table: one row per (group, measurement) with :data:`STATISTICS`."""
    columns = [score_column(m) for m in names]
    out_columns = [*keys, "measurement", *STATISTICS]
    rows: list[dict[str, Any]] = []
    if len(df):
        for key, part in df.groupby(keys, dropna=False, sort=True, observed=True):
            key = key if isinstance(key, tuple) else (key,)
            stats = describe(part[columns].to_numpy(dtype=float), n_boot=n_boot, seed=seed, ci=ci)
            for j, name in enumerate(names):
                row = dict(zip(keys, key))
                row["measurement"] = name
                row.update({s: stats[s][j] for s in STATISTICS})
                rows.append(row)
    frame = pd.DataFrame(rows, columns=out_columns)
    frame["n"] = frame["n"].astype("int64")
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
    """Per group and measurement: ``n``, ``mean`` (+ CI), ``median``, ``share_positive`` (+ CI).

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
    measurement ``<m>_mean``, ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_share_positive``.
    """
    names = _checked_instance(instance_df, ["domain"], measurements)
    return _cross_domain_from_long(_summarise(instance_df, ["domain"], names, n_boot, seed, ci), names)


def _cross_domain_from_long(long: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Pivot a by-domain :func:`group_summary` into the wide cross-domain matrix."""
    domains = list(dict.fromkeys(long["domain"]))
    columns = ["domain", "n"] + [f"{m}_{s}" for m in names for s in ("mean", "ci_low", "ci_high", "share_positive")]
    rows = []
    for domain in domains:
        part = long[long["domain"].isna()] if pd.isna(domain) else long[long["domain"] == domain]
        row: dict[str, Any] = {"domain": domain, "n": int(part["n"].iloc[0])}
        for _, r in part.iterrows():
            m = r["measurement"]
            row.update({f"{m}_mean": r["mean"], f"{m}_ci_low": r["mean_ci_low"],
                        f"{m}_ci_high": r["mean_ci_high"], f"{m}_share_positive": r["share_positive"]})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns)
    frame["n"] = frame["n"].astype("int64")
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
) -> pd.DataFrame:
    """Per behaviour and measurement: examples that show it (count > 0) vs examples that do not.

    Columns: ``behaviour``, ``measurement``, ``n_with``, ``share_of_examples`` (prevalence, Figure
    6's distribution), ``mean_with`` (+ ``_ci_low``/``_ci_high``), ``share_positive_with``, the same
    ``*_without``, and ``difference`` = mean_with - mean_without (a point estimate; the two CIs
    show its uncertainty). A behaviour no example shows has no row (a "with" side of nothing is
    not a statistic); its name is in ``attrs["not_observed"]``. Untagged examples (null counts) and
    a table where no example shows any behaviour are errors: both mean nothing was measured.
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
    columns = [score_column(m) for m in names]
    scores = instance_df[columns].to_numpy(dtype=float).reshape(len(instance_df), len(names))
    rows = []
    for behaviour, count_column in mapping.items():
        present = instance_df[count_column].to_numpy(dtype=float) > 0
        with_ = describe(scores[present], n_boot=n_boot, seed=seed, ci=ci)
        without = describe(scores[~present], n_boot=n_boot, seed=seed, ci=ci)
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
            })
    frame = pd.DataFrame(rows)
    frame.attrs["not_observed"] = not_observed
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
) -> pd.DataFrame:
    """Mean sentence removal score (Eq. 7) per behaviour label and measurement, with CIs.

    A sentence with several labels counts once for each; sentences without labels form the
    ``unlabelled`` row, the baseline a behaviour should be compared with. Sentence scores exist only
    for the examples the sentence pass scored (the top-K per measurement), so this describes those
    examples, not the whole training set. ``mean_token_sum`` (when ``score_token_sum`` is present) is
    the cheap token-sum approximation of the same quantity, for comparison.
    """
    sentences = _checked_sentences(sentence_df, score, measurements)
    labels = sentences["behaviours"].map(sentence_behaviours)
    labels = labels.map(lambda names: names if names else [UNLABELLED])
    exploded = sentences.assign(behaviour=labels).explode("behaviour")
    has_token_sum = "score_token_sum" in exploded.columns
    columns = ["behaviour", "measurement", "n_sentences", "n_examples", *STATISTICS[1:]]
    if has_token_sum:
        columns.append("mean_token_sum")
    rows = []
    for measurement in dict.fromkeys(exploded["measurement"].astype(str)):
        part_m = exploded[exploded["measurement"].astype(str) == measurement]
        for label in _label_order(list(set(part_m["behaviour"]))):
            part = part_m[part_m["behaviour"] == label]
            stats = describe(part[score].to_numpy(dtype=float), n_boot=n_boot, seed=seed, ci=ci)
            row: dict[str, Any] = {"behaviour": label, "measurement": measurement,
                                   "n_sentences": len(part), "n_examples": part["id"].nunique()}
            row.update({s: stats[s][0] for s in STATISTICS[1:]})
            if has_token_sum:
                row["mean_token_sum"] = float(np.nanmean(part["score_token_sum"].to_numpy(dtype=float))) if len(part) else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


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
) -> dict[str, pd.DataFrame]:
    """The tables the report shows, keyed by file name, most-read first.

    Optional inputs are skipped rather than failing: no ``category`` column -> no category table,
    no behaviour counts -> no behaviour table, no sentence scores -> no sentence table. Cost is
    about ``n_boot`` x N x (3 + number of behaviours) index draws and gathers per measurement
    (N = training examples); lower ``n_boot`` for a quick look at a very large set.
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
        tables["behaviours"] = behaviour_summary(instance_df, **kw)
    if sentence_df is not None and len(sentence_df):
        tables["sentence_behaviours"] = sentence_behaviour_summary(sentence_df, **kw)
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
