"""Per-item attribution scores [Q, N] of every compared method, on the fully trained model.

One row per measurement item q (the D_correct items, or the fallback items) and one column per
training example z. Row q is the score for the measurement f_q = log p(q); because every method
here is linear in the measurement, the score for a domain's f = mean_q log p(q) (paper Eq. 6) is
the mean of that domain's rows -- so the per-item matrix serves both the per-domain LDS and the
per-item LDS, from one computation per method.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from infra_pl.ekfac import Factors, find_tracked_modules, fit_factors
from infra_pl.influence import instance_scores, query_directions
from infra_pl.lds.baselines import (
    BM25Scores,
    IdentityPreconditioner,
    kfac_factors,
    scaled_damping,
)
from infra_pl.lds.data import LDSData, example_text
from infra_pl.lds.kronfluence_ref import kronfluence_available, kronfluence_pairwise

METHOD_DESCRIPTIONS = {
    "ekfac": "EK-FAC, true Fisher, λ = 0.1·mean(Λ) (ours, the default)",
    "ekfac-empirical": "EK-FAC, empirical Fisher (data labels)",
    "ekfac-targets": "EK-FAC, true Fisher, A averaged over the positions that predict a target only (bergson's and "
    "dattri's convention; the default averages over every real token, as kronfluence)",
    "ekfac-damping-x<s>": "EK-FAC, true Fisher, damping λ multiplied by s",
    "kfac": "K-FAC, true Fisher: Λ := eig(S) ⊗ eig(A), λ = 0.1·mean",
    "identity": "identity Hessian: gradient dot product ∇fᵀ∇log p(z)",
    "bm25": "BM25 text similarity (rank-bm25), no model",
    "domain": "reference predictor, not an attribution method: score 1 for every training example of the "
    "measured item's domain, 0 otherwise (Σ over a subset = its in-domain count)",
    "kronfluence-ekfac": "kronfluence 1.0.1 EK-FAC, true Fisher, its default damping (if installed)",
    "ekfac-sub<fraction>": "EK-FAC, true Fisher, both factor passes on a seeded domain-stratified sample of that "
    "fraction of the training set",
    "ekfac-cg<k>[-full][-empirical]": "EK-FAC refined by k iterations of preconditioned CG on the damped Fisher "
    "(block-diagonal per module, or -full with the cross-module blocks; true Fisher unless -empirical), over the "
    "whole training set",
}
DEFAULT_METHODS = (
    "ekfac",
    "ekfac-empirical",
    "ekfac-damping-x0.1",
    "ekfac-damping-x10",
    "kfac",
    "identity",
    "bm25",
    "kronfluence-ekfac",
    "domain",
)
_DAMPING = re.compile(r"^ekfac-damping-x([0-9.eE+-]+)$")
_CG = re.compile(r"^ekfac-cg([0-9]+)(-full)?(-empirical)?$")
_SUB = re.compile(r"^ekfac-sub(0?\.[0-9]+|1(\.0*)?)$")


def check_methods(methods: Sequence[str]) -> list[str]:
    """Validate method names early (with the allowed names in the message)."""
    known = {k for k in METHOD_DESCRIPTIONS if "<" not in k}
    bad = [m for m in methods if m not in known and not _DAMPING.match(m) and not _CG.match(m) and not _SUB.match(m)]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {sorted(known)}, ekfac-damping-x<scale> or "
                         "ekfac-cg<k>[-full][-empirical], ekfac-sub<fraction>")
    for m in methods:
        match = _DAMPING.match(m)
        if match:
            try:
                if not float(match.group(1)) > 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"{m}: the damping scale must be a positive number") from None
    return list(methods)


def describe(method: str) -> str:
    match = _DAMPING.match(method)
    if match:
        return f"EK-FAC, true Fisher, damping × {match.group(1)}"
    match = _SUB.match(method)
    if match:
        return f"EK-FAC, true Fisher, factors from a {float(match.group(1)):.0%} stratified sample"
    match = _CG.match(method)
    if match:
        return (f"EK-FAC + {match.group(1)} CG iteration(s), {'full' if match.group(2) else 'block-diagonal'} "
                f"{'empirical' if match.group(3) else 'true'} Fisher")
    return METHOD_DESCRIPTIONS[method]


@dataclass
class ScoringContext:
    """The fully trained model, the data, and the measurement items; caches fitted factors."""

    model: nn.Module
    data: LDSData
    query_indices: list[int]  # positions in data.eval_features, measurement order
    batch_size: int = 32
    fisher_seed: int = 0
    progress: bool = False
    _factors: dict[str, Factors] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.modules = find_tracked_modules(self.model)

    @property
    def module_names(self) -> list[str]:
        return list(self.modules)

    def factors(self, fisher: str, activation_tokens: str = "all", fraction: float | None = None) -> Factors:
        key = f"{fisher}/{activation_tokens}/{fraction}"
        if key not in self._factors:
            loader = self.data.batches(_by_length(self.data.train_features), self.batch_size)
            domains = [e["domain"] for e in self.data.train_examples]
            self._factors[key] = fit_factors(
                self.model, loader, modules=self.modules, fisher=fisher, seed=self.fisher_seed, progress=self.progress,
                activation_tokens=activation_tokens, covariance_max_examples=fraction, lambda_max_examples=fraction,
                train_ids=list(range(len(domains))), strata=domains,
            )
        return self._factors[key]

    def query_features(self) -> list[dict[str, Any]]:
        return self.data.eval_features_at(self.query_indices)


def _by_length(features: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Similar lengths batched together: less padding; the ``index`` field keeps the bookkeeping."""
    return sorted(features, key=lambda f: len(f["input_ids"]))


def gradient_pairwise(ctx: ScoringContext, preconditioner: Any, dtype: torch.dtype = torch.float32,
                      refine: Callable[[Any], Any] | None = None) -> np.ndarray:
    """[Q, N] scores ∇log p(q)ᵀ P ∇log p(z) for a preconditioner P (anything with ``precondition``).

    ``refine`` maps the preconditioned query directions to new ones (CG refinement) before scoring.
    """
    queries = _by_length(ctx.query_features())
    directions = query_directions(
        ctx.model, ctx.data.batches(queries, ctx.batch_size), preconditioner, modules=ctx.modules, dtype=dtype
    )
    if refine is not None:
        directions = refine(directions)
    # query_directions names its rows query_<k> in loader order; select them in measurement order
    row_of = {f["index"]: k for k, f in enumerate(queries)}
    directions = directions.select([f"query_{row_of[i]}" for i in ctx.query_indices])
    scores = np.zeros((len(ctx.query_indices), len(ctx.data.train_features)))
    with torch.no_grad():
        for batch in ctx.data.batches(_by_length(ctx.data.train_features), ctx.batch_size):
            part = instance_scores(ctx.model, batch, directions, ctx.modules)  # [B, Q]
            scores[:, batch["index"].numpy()] = part.double().t().cpu().numpy()
    return scores


def refined_pairwise(ctx: "ScoringContext", fisher: str, iterations: int, blocks: str) -> np.ndarray:
    """[Q, N] scores with every query's direction refined by CG from EK-FAC (all queries at once)."""
    from infra_pl.ekfac.loss import causal_lm_loss
    from infra_pl.influence.refine import FisherProduct, refine_directions
    from infra_pl.runner import InProcessRunner

    def refine(gradients: Any) -> Any:
        product = FisherProduct(ctx.model, ctx.modules, causal_lm_loss, fisher, blocks=blocks, seed=ctx.fisher_seed)
        loader = lambda: ctx.data.batches(_by_length(ctx.data.train_features), ctx.batch_size)  # noqa: E731
        return refine_directions(InProcessRunner(progress=False), loader, ctx.factors(fisher), product, gradients,
                                 iterations, 0.0).directions

    return gradient_pairwise(ctx, IdentityPreconditioner(), refine=refine)


def method_pairwise(method: str, ctx: ScoringContext) -> np.ndarray:
    """The [Q, N] score matrix of one method (see :data:`METHOD_DESCRIPTIONS`)."""
    check_methods([method])
    match = _DAMPING.match(method)
    if match:
        return gradient_pairwise(ctx, scaled_damping(ctx.factors("true"), float(match.group(1))))
    match = _SUB.match(method)
    if match:
        return gradient_pairwise(ctx, ctx.factors("true", fraction=float(match.group(1))))
    match = _CG.match(method)
    if match:
        fisher = "empirical" if match.group(3) else "true"
        return refined_pairwise(ctx, fisher, int(match.group(1)), "all" if match.group(2) else "module")
    builders: dict[str, Callable[[], np.ndarray]] = {
        "ekfac": lambda: gradient_pairwise(ctx, ctx.factors("true")),
        "ekfac-empirical": lambda: gradient_pairwise(ctx, ctx.factors("empirical")),
        "ekfac-targets": lambda: gradient_pairwise(ctx, ctx.factors("true", "targets")),
        "kfac": lambda: gradient_pairwise(ctx, kfac_factors(ctx.factors("true"))),
        "identity": lambda: gradient_pairwise(ctx, IdentityPreconditioner()),
        "bm25": lambda: BM25Scores([example_text(e) for e in ctx.data.train_examples]).pairwise(
            [example_text(ctx.data.eval_examples[i]) for i in ctx.query_indices]
        ),
        "kronfluence-ekfac": lambda: _kronfluence(ctx),
        "domain": lambda: _same_domain(ctx),
    }
    return builders[method]()


def _same_domain(ctx: ScoringContext) -> np.ndarray:
    """1 where the training example shares the measured item's domain: what domain mix alone predicts."""
    train = np.array([e["domain"] for e in ctx.data.train_examples])
    query = np.array([ctx.data.eval_examples[i]["domain"] for i in ctx.query_indices])
    return (query[:, None] == train[None, :]).astype(np.float64)


def _kronfluence(ctx: ScoringContext) -> np.ndarray:
    if not kronfluence_available():
        raise ImportError("kronfluence is not installed (pip install --no-deps kronfluence==1.0.1 einops einconv opt-einsum)")
    return kronfluence_pairwise(
        ctx.model,
        ctx.module_names,
        ctx.data.train_features,
        ctx.query_features(),
        ctx.data.pad_token_id,
        fisher="true",
        batch_size=ctx.batch_size,
        seed=ctx.fisher_seed,
    )
