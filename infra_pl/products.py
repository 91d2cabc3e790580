"""What ``infra-pl attribute`` produces, as typed values (no Lightning here).

Each product is a frozen dataclass; the drivers return them, the callbacks publish them as
``trainer.attribution_state`` (an :class:`AttributionState`) and hand them to the hooks
(:mod:`infra_pl.hooks`), so a step, a user callback and a pure-API caller read the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class FactorsReady:
    """EK-FAC factors are fitted (or reused) and saved.

    ``factors`` is the in-memory :class:`infra_pl.ekfac.Factors`; ``factors_dir`` holds its
    safetensors files and ``manifest.json``.
    """

    factors_dir: Path
    factors: Any
    modules: list[str]
    fisher: str
    reused: bool
    partitions: list[list[str]] = field(default_factory=list)  # module groups fitted one after another

    hook = "on_factors_ready"


@dataclass(frozen=True)
class ScoresReady:
    """Influence scores are computed and written.

    ``instance_scores``: one row per training example: ``id``, ``index``, the datamodule's
    metadata columns, and ``score_<measurement>`` per measurement (positive = up-weighting the
    example raises f). ``token_scores`` / ``sentence_scores`` are long tables (None when not
    computed). ``measurement_info`` maps each measurement name to its description (items used,
    fallback, f value). Paths are None for products that were not written.
    """

    scores_dir: Path
    measurements: list[str]
    instance_scores: pd.DataFrame
    measurement_info: dict[str, Any] = field(default_factory=dict)
    instance_scores_path: Path | None = None
    token_scores: pd.DataFrame | None = None
    token_scores_path: Path | None = None
    sentence_scores: pd.DataFrame | None = None
    sentence_scores_path: Path | None = None
    pairwise_scores_path: Path | None = None
    behaviour_removal: pd.DataFrame | None = None  # S(z) − S(z without all sentences of a behaviour), Table 2
    behaviour_removal_path: Path | None = None
    pairwise_scores: pd.DataFrame | None = None
    directions: Any = None  # the measurement directions v = H⁻¹∇f (infra_pl.influence.Directions)

    hook = "on_scores_ready"

    @staticmethod
    def score_column(measurement: str) -> str:
        return f"score_{measurement}"

    def top(self, measurement: str, k: int, proponents: bool = True) -> pd.DataFrame:
        """The k training examples with the largest (proponents) or smallest (opponents) score."""
        if measurement not in self.measurements:
            raise KeyError(f"unknown measurement {measurement!r}; have {self.measurements}")
        column = self.score_column(measurement)
        pick = self.instance_scores.nlargest if proponents else self.instance_scores.nsmallest
        return pick(k, column)


@dataclass(frozen=True)
class ReportReady:
    """The report is written: ``report_dir`` with ``html_path``/``markdown_path`` and the tables."""

    report_dir: Path
    html_path: Path
    markdown_path: Path
    tables: dict[str, Any]
    scores: ScoresReady | None = None

    hook = "on_report_ready"


AttributionEvent = FactorsReady | ScoresReady | ReportReady


@dataclass
class AttributionState:
    """What ``attribute`` has produced so far (``trainer.attribution_state``, its return value).

    Each product is the event its hook received, so a step reads the previous step's output the
    way a user callback does: ``state.factors.factors``, ``state.scores.instance_scores``, ...
    """

    factors: FactorsReady | None = None
    scores: ScoresReady | None = None
    report: ReportReady | None = None

    def require(self, product: str, needed_by: str, provider: str) -> Any:
        """The product, or an error naming the callback that must run first."""
        value = getattr(self, product)
        if value is None:
            raise RuntimeError(f"{needed_by} needs {provider} to run first (add it to trainer.callbacks)")
        return value
