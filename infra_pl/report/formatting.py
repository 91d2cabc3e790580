"""How numbers and missing values look in the rendered reports.

Why one place: HTML and Markdown print the same tables; a score must not read ``2.2e+08`` in one
and ``220000000.0`` in the other, and a missing value must look missing (not ``nan`` or ``<NA>``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MISSING", "format_value", "is_missing"]

MISSING = "\u2014"  # an em dash: clearly "no value", unlike 0 or "nan"


def is_missing(value: Any) -> bool:
    """True for None, NaN, pd.NA and NaT (and never raises on lists or arrays)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return False


def format_value(value: Any, digits: int = 4) -> str:
    """Compact text for a table cell: integers as is, floats with ``digits`` significant digits,
    lists joined by commas, missing values as an em dash."""
    if is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if float(value).is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{float(value):.{digits}g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v) for v in value) if len(value) else MISSING
    return str(value)
