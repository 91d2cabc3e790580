"""What EK-FAC is compared with: other curvature approximations and a text-similarity baseline.

Each curvature variant is a *preconditioner*: an object with ``precondition(grads) -> grads`` over
the ``{module: [out, in(+1)]}`` gradients, which is all :func:`infra_pl.influence.query_directions`
and :func:`infra_pl.influence.measurement_directions` need. They are built from fitted EK-FAC
factors without refitting and without touching :mod:`infra_pl.ekfac`:

* ``kfac_factors``       -- K-FAC: the eigenvalue correction Λ replaced by the Kronecker product of
                            the eigenvalues of S and A (what K-FAC's (A ⊗ S) has in that basis),
                            damped with the same rule, 0.1 · mean of those eigenvalue products.
* ``scaled_damping``     -- EK-FAC with each module's damping multiplied by a factor.
* ``IdentityPreconditioner`` -- H = I: the score is the plain gradient dot product ∇fᵀ∇log p(z).
* ``BM25Scores``         -- no model at all: Okapi BM25 relevance (``rank-bm25``) of each training
                            text to each measurement text.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from infra_pl.ekfac.factors import HEURISTIC_DAMPING_SCALE, MIN_DAMPING, Factors
from infra_pl.influence.refine import IdentityPreconditioner  # noqa: F401 - one of the compared preconditioners


def kfac_lambdas(activation_eigenvalues: torch.Tensor, gradient_eigenvalues: torch.Tensor) -> torch.Tensor:
    """K-FAC's eigenvalues in the Kronecker eigenbasis: Λ[o, i] = s_o · a_i, shape [out, in(+1)].

    (A ⊗ S) has eigenvalues a_i s_o in the basis Q_S ⊗ Q_A; tiny negative eigenvalues from
    rounding are clipped to zero so the damped inverse stays positive.
    """
    s = gradient_eigenvalues.clamp(min=0)
    a = activation_eigenvalues.clamp(min=0)
    return torch.outer(s, a)


def kfac_factors(factors: Factors, damping_scale: float = HEURISTIC_DAMPING_SCALE) -> Factors:
    """K-FAC from fitted EK-FAC factors: same eigenbases, Λ := eig(S) ⊗ eig(A), λ = scale · mean(Λ)."""
    modules = {}
    for name, module in factors.modules.items():
        lam = kfac_lambdas(module.eigen.activation_eigenvalues, module.eigen.gradient_eigenvalues).to(module.lambdas.dtype)
        damping = max(damping_scale * float(lam.double().mean()), MIN_DAMPING)
        modules[name] = replace(module, lambdas=lam, damping=damping)
    return replace(factors, modules=modules, damping_rule=f"kfac:{damping_scale}*mean(eig(S) x eig(A))")


def scaled_damping(factors: Factors, scale: float) -> Factors:
    """The same factors with every module's damping λ multiplied by ``scale``."""
    if not scale > 0:
        raise ValueError(f"damping scale must be > 0, got {scale}")
    modules = {name: replace(m, damping=m.damping * scale) for name, m in factors.modules.items()}
    return replace(factors, modules=modules, damping_rule=f"{factors.damping_rule} x {scale:g}")


_WORD = re.compile(r"[a-z]+|\d|[^\sa-z\d]")


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased words, single digits and single symbols: digits one by one, like the demo tokenizer."""
    return _WORD.findall(text.lower())


class BM25Scores:
    """Okapi BM25 relevance of every training text (document) to a measurement text (query).

    The score of training example z for a measurement with items q_1..q_n is the mean of
    BM25(q_k, z): like the influence score of f = mean log p(q_k), a mean over the items.
    """

    def __init__(self, train_texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        from rank_bm25 import BM25Okapi

        if not train_texts:
            raise ValueError("BM25 needs at least one training text")
        self._index = BM25Okapi([bm25_tokens(t) for t in train_texts], k1=k1, b=b)
        self.n_train = len(train_texts)

    def pairwise(self, query_texts: Sequence[str]) -> np.ndarray:
        """[Q, N] relevance of each training text to each query text."""
        return np.stack([np.asarray(self._index.get_scores(bm25_tokens(q)), dtype=np.float64) for q in query_texts])
