"""Lightning callbacks of infra-pl, importable as ``infra_pl.callbacks``.

They act only inside ``infra-pl attribute`` passes, so they can share the YAML callback list of
``fit`` and ``validate``.
"""

from infra_pl.callbacks.ekfac_factors import EKFACFactors

__all__ = ["EKFACFactors"]
