"""Lightning callbacks of infra-pl, importable as ``infra_pl.callbacks``.

They act only inside ``infra-pl attribute`` passes, so they can share the YAML callback list of
``fit`` and ``validate``. ``attribute`` runs them in order: factors, scores, report, and after
each calls the hook points of :mod:`infra_pl.hooks` (``on_factors_ready``, ``on_scores_ready``,
``on_report_ready``) on every callback that defines them; :class:`AttributionHooks` is the base
class for such user callbacks.
"""

from infra_pl.callbacks.attribution_report import AttributionReport
from infra_pl.callbacks.ekfac_factors import EKFACFactors
from infra_pl.callbacks.influence_scores import InfluenceScores
from infra_pl.hooks import AttributionHooks, FactorsReady, ReportReady, ScoresReady

__all__ = ["AttributionHooks", "AttributionReport", "EKFACFactors", "FactorsReady", "InfluenceScores", "ReportReady", "ScoresReady"]
