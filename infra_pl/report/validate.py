"""Input checks for the report: fail early, naming the exact columns or rows at fault.

Why a separate module: every table and figure reads the same three score tables, written by
callbacks other people maintain. A silently missing column or a NaN score would otherwise surface
as an empty bar, a ``KeyError`` deep inside pandas, or a mean that quietly ignores rows. One set of
checks with readable messages keeps those failures at the door.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "BEHAVIOUR_PREFIX",
    "SCORE_PREFIX",
    "ReportInputError",
    "behaviour_columns",
    "require_columns",
    "require_finite",
    "resolve_measurements",
    "score_column",
]

SCORE_PREFIX = "score_"
BEHAVIOUR_PREFIX = "behaviour_"


class ReportInputError(ValueError):
    """A score table the report cannot use, with the table, columns or rows that are wrong."""


def score_column(measurement: str) -> str:
    """Column of the instance-score table holding ``measurement`` (``math`` -> ``score_math``)."""
    return measurement if measurement.startswith(SCORE_PREFIX) else SCORE_PREFIX + measurement


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise :class:`ReportInputError` listing every column of ``columns`` that ``df`` lacks."""
    if not isinstance(df, pd.DataFrame):
        raise ReportInputError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise ReportInputError(
            f"{what}: missing required column(s) {missing}; present: {sorted(map(str, df.columns))}"
        )


def resolve_measurements(df: pd.DataFrame, measurements: Sequence[str] | None, what: str = "instance scores") -> list[str]:
    """Measurement names to report on (without the ``score_`` prefix).

    ``None`` means every ``score_*`` column, in table order, so a run with extra measurements (say
    ``score_aime``) is reported without configuration. Explicit names may carry the prefix or not.
    """
    require_columns(df, [], what)
    if measurements is None:
        names = [_strip(str(c), SCORE_PREFIX) for c in df.columns if str(c).startswith(SCORE_PREFIX)]
        if not names:
            raise ReportInputError(
                f"{what}: no '{SCORE_PREFIX}<measurement>' columns (e.g. score_math, score_code); "
                f"present: {sorted(map(str, df.columns))}"
            )
        return names
    if isinstance(measurements, str):
        measurements = [measurements]
    names = [_strip(m, SCORE_PREFIX) for m in measurements]
    if not names:
        raise ReportInputError(f"{what}: the list of measurements is empty")
    require_columns(df, [score_column(m) for m in names], what)
    return list(dict.fromkeys(names))


def behaviour_columns(df: pd.DataFrame, behaviours: Sequence[str] | None, what: str = "instance scores") -> dict[str, str]:
    """Map behaviour name -> count column (``exploration`` -> ``behaviour_exploration``)."""
    if behaviours is None:
        found = {_strip(str(c), BEHAVIOUR_PREFIX): str(c) for c in df.columns if str(c).startswith(BEHAVIOUR_PREFIX)}
        if not found:
            raise ReportInputError(
                f"{what}: no '{BEHAVIOUR_PREFIX}<name>' count columns (e.g. behaviour_exploration); "
                f"present: {sorted(map(str, df.columns))}"
            )
        return found
    if isinstance(behaviours, str):
        behaviours = [behaviours]
    mapping = {_strip(b, BEHAVIOUR_PREFIX): BEHAVIOUR_PREFIX + _strip(b, BEHAVIOUR_PREFIX) for b in behaviours}
    require_columns(df, mapping.values(), what)
    return mapping


def require_finite(df: pd.DataFrame, columns: Iterable[str], what: str, id_column: str = "id") -> None:
    """Refuse non-numeric, NaN or infinite values in score columns, saying how many rows are bad.

    Why refuse rather than drop: a NaN score means a scoring pass failed or was cut short for that
    example; averaging the rest would report a number for a population that was not measured.
    """
    for column in columns:
        series = df[column]
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
            raise ReportInputError(f"{what}: column '{column}' must be numeric, got dtype {series.dtype}")
        values = series.to_numpy(dtype=float, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            count = int(bad.sum())
            example = ""
            if id_column in df.columns:
                ids = [str(i) for i in df.loc[bad, id_column].head(3)]
                example = f" (first ids: {', '.join(ids)})"
            raise ReportInputError(
                f"{what}: {count} of {len(df)} row(s) have a NaN or infinite value in '{column}'{example}; "
                "re-run or finish the scoring pass for those examples"
            )
