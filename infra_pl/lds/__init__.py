"""Attribution quality: linear datamodeling score (LDS) and counterfactual removal checks.

Are the scores right? Retrain on many random subsets and check that the scores predict the
measured f (LDS, Park et al. 2023), and that removing the top-scored examples lowers f more than
removing random ones. Modules, each with one job:

* :mod:`config`      -- :class:`LDSSetting` (what fixes a retrain) and its hash; :class:`TrainRecipe`
* :mod:`data`        -- the demo data, tokenised (training set, evaluation items, pre-training pool)
* :mod:`training`    -- the deterministic fixed-step SFT loop and per-item log-likelihoods
* :mod:`correctness` -- greedy answers of the full model, scored (D_correct)
* :mod:`subsets`     -- subset draws and the resumable retrain store/loop
* :mod:`baselines`   -- K-FAC, scaled damping, identity preconditioners; BM25 text similarity
* :mod:`kronfluence_ref` -- kronfluence's EK-FAC on the same model (optional)
* :mod:`scoring`     -- the [items × training examples] score matrix of each method
* :mod:`metrics`     -- Spearman with ties, LDS with bootstrap interval, t intervals
* :mod:`experiment`  -- :func:`run_lds`: everything above, resumable, results JSON + markdown

Usage::

    from infra_pl.lds import LDSSetting, LDSOptions, run_lds
    results = run_lds(LDSSetting(), LDSOptions(n_subsets=20), out_dir="benchmarks/results/lds")
    results["lds"]["ekfac"]["lds"]       # {"value": ..., "low": ..., "high": ...}
"""

from importlib import import_module
from typing import Any

# Names resolve on first use (PEP 562), so ``import infra_pl.lds.metrics`` stays light: the
# metric maths needs numpy only, not torch/transformers/lightning.
_WHERE = {
    "BM25Scores": "baselines",
    "IdentityPreconditioner": "baselines",
    "kfac_factors": "baselines",
    "scaled_damping": "baselines",
    "LDSSetting": "config",
    "TrainRecipe": "config",
    "LDSExperiment": "experiment",
    "LDSOptions": "experiment",
    "lds_table": "experiment",
    "run_lds": "experiment",
    "Interval": "metrics",
    "lds": "metrics",
    "mean_interval": "metrics",
    "spearman": "metrics",
    "subset_predictions": "metrics",
    "DEFAULT_METHODS": "scoring",
    "METHOD_DESCRIPTIONS": "scoring",
    "RetrainRecord": "subsets",
    "RetrainStore": "subsets",
    "draw_subsets": "subsets",
    "run_retrains": "subsets",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'infra_pl.lds' has no attribute {name!r}")
    value = getattr(import_module(f"infra_pl.lds.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_METHODS",
    "METHOD_DESCRIPTIONS",
    "BM25Scores",
    "IdentityPreconditioner",
    "Interval",
    "LDSExperiment",
    "LDSOptions",
    "LDSSetting",
    "RetrainRecord",
    "RetrainStore",
    "TrainRecipe",
    "draw_subsets",
    "kfac_factors",
    "lds",
    "lds_table",
    "mean_interval",
    "run_lds",
    "run_retrains",
    "scaled_damping",
    "spearman",
    "subset_predictions",
]
