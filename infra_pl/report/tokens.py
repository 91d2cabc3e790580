"""Token-score presentation shared by the PNG heatmap and the HTML spans (paper Figure 7).

Why one module: the figure and the HTML must agree on which tokens are "top 5%" and on what a
colour means, otherwise the same example looks different in TensorBoard and in the report.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Sequence

import numpy as np
import pandas as pd

from infra_pl.report.validate import ReportInputError, require_columns, require_finite

__all__ = [
    "NEGATIVE_RGB",
    "POSITIVE_RGB",
    "TOKEN_COLUMNS",
    "colour_scale",
    "example_tokens",
    "printable",
    "score_rgb",
    "top_token_mask",
]

TOKEN_COLUMNS = ("id", "measurement", "position", "token", "score")
POSITIVE_RGB = (0.84, 0.30, 0.10)  # warm: raises f (helps the measurement)
NEGATIVE_RGB = (0.15, 0.40, 0.75)  # cool: lowers f
MAX_TINT = 0.75  # strongest tint; keeps black text readable on the darkest cell


def top_token_mask(scores: Sequence[float] | np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """True for the top ``fraction`` of tokens by score (at least one token), among positive ones.

    The paper highlights the most *positively* influential tokens; a token with a score <= 0 does
    not help the measurement, so it is never highlighted even when it ranks high in a sequence
    that is negative throughout. Ties at the cut-off are all included.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    values = np.asarray(scores, dtype=float)
    if values.size == 0:
        return np.zeros(0, dtype=bool)
    k = max(1, math.ceil(fraction * values.size))
    threshold = np.partition(values, values.size - k)[values.size - k]
    return (values >= threshold) & (values > 0)


def colour_scale(scores: Sequence[float] | np.ndarray) -> float:
    """The |score| that maps to the strongest tint: the sequence's largest magnitude (1 if all 0)."""
    values = np.asarray(scores, dtype=float)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    return peak if peak > 0 and math.isfinite(peak) else 1.0


def score_rgb(score: float, scale: float) -> tuple[float, float, float]:
    """Background colour of a token: white at 0, warm for positive, cool for negative scores."""
    t = MAX_TINT * min(1.0, abs(float(score)) / scale) if scale > 0 else 0.0
    target = POSITIVE_RGB if score > 0 else NEGATIVE_RGB
    return tuple(1.0 - t * (1.0 - c) for c in target)  # type: ignore[return-value]


def printable(text: str, newline: str = "\u21b5", tab: str = "\u2192") -> str:
    """A token piece with invisible characters made visible (newline -> ``↵``, tab -> ``→``, other
    control characters as escapes such as ``\\x00``). HTML passes ``newline="↵\\n"`` and keeps tabs."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append(newline)
        elif ch == "\t":
            out.append(tab)
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def example_tokens(token_df: pd.DataFrame, example_id: str, measurement: str) -> tuple[list[str], np.ndarray]:
    """Tokens and scores of one example for one measurement, in position order.

    Empty lists when the token pass did not score this example (it scores only the top-K).
    """
    require_columns(token_df, TOKEN_COLUMNS, "token scores")
    rows = token_df[(token_df["id"].astype(str) == str(example_id)) & (token_df["measurement"].astype(str) == str(measurement))]
    if rows.empty:
        return [], np.zeros(0)
    require_finite(rows, ["score"], "token scores")
    rows = rows.sort_values("position", kind="stable")
    if rows["position"].duplicated().any():
        raise ReportInputError(
            f"token scores: example '{example_id}', measurement '{measurement}' has duplicated positions"
        )
    tokens = ["" if t is None or (isinstance(t, float) and math.isnan(t)) else str(t) for t in rows["token"]]
    return tokens, rows["score"].to_numpy(dtype=float)
