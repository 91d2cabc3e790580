"""Pure-torch EK-FAC influence core (no Lightning imports).

Phases, each usable on its own so a Lightning callback can drive them batch by batch:

1. covariance  -- :class:`CovarianceAccumulator` / :func:`fit_covariance` -> :class:`CovarianceState`
2. eigen       -- :func:`eigendecompose` -> ``{module: EigenBasis}`` (float64 ``eigh``)
3. lambda      -- :class:`LambdaAccumulator` / :func:`fit_lambda` -> :class:`LambdaState`
4. assemble    -- :meth:`Factors.from_states` (damping, fingerprints); save/load/precondition

:func:`fit_factors` runs all of them; :func:`per_example_gradients` gives ∇L(z) per sequence for
scoring. Gradients are of the *loss* (summed NLL), so S(z) = −precondition(∇f) · ∇L(z).
"""

from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.covariance import CovarianceAccumulator, CovarianceState, fit_covariance
from infra_pl.ekfac.eigen import EigenBasis, NonFiniteFactorError, eigendecompose
from infra_pl.ekfac.factors import Factors, FactorsMismatchError, ModuleFactors, resolve_damping
from infra_pl.ekfac.fingerprint import data_fingerprint, model_fingerprint
from infra_pl.ekfac.fit import fit_factors
from infra_pl.ekfac.gradients import per_example_gradients, sequence_gradients
from infra_pl.ekfac.lambdas import LambdaAccumulator, LambdaState, fit_lambda
from infra_pl.ekfac.loss import LossFn, causal_lm_loss, sample_target_labels
from infra_pl.ekfac.modules import LayerShape, find_tracked_modules, layer_shape, split_weight_bias, weight_matrix

__all__ = [
    "Capture",
    "CovarianceAccumulator",
    "CovarianceState",
    "EigenBasis",
    "Factors",
    "FactorsMismatchError",
    "LambdaAccumulator",
    "LambdaState",
    "LayerShape",
    "LossFn",
    "ModuleFactors",
    "NonFiniteFactorError",
    "causal_lm_loss",
    "data_fingerprint",
    "eigendecompose",
    "find_tracked_modules",
    "fit_covariance",
    "fit_factors",
    "fit_lambda",
    "layer_shape",
    "model_fingerprint",
    "per_example_gradients",
    "resolve_damping",
    "sample_target_labels",
    "sequence_gradients",
    "split_weight_bias",
    "weight_matrix",
]
