"""Lightning callbacks of infra-pl, importable as ``infra_pl.callbacks``.

They act only inside ``infra-pl attribute`` passes, so they can share the YAML callback list of
``fit`` and ``validate``. ``attribute`` runs them in order: factors, scores, report.
"""

from infra_pl.callbacks.attribution_report import AttributionReport
from infra_pl.callbacks.ekfac_factors import EKFACFactors
from infra_pl.callbacks.influence_scores import InfluenceScores

__all__ = ["AttributionReport", "EKFACFactors", "InfluenceScores"]
