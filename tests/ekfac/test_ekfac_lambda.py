"""(b) Λ equals the diagonal of the exact per-module Fisher in the Kronecker eigenbasis.

The reference Fisher block F = mean_n vec(G_n) vec(G_n)^T is built from per-sequence weight
gradients that autograd computes on each unpadded sequence alone; vec is row-major over the
[out, in] gradient, which pairs with the Kronecker order Q_S ⊗ Q_A.
"""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import (
    LLAMA_MLP,
    float64_loss,
    rel_err,
    sequences,
    single_sequence_weight_grads,
    tiny_llama,
)

from infra_pl.ekfac import causal_lm_loss, fit_factors


def exact_fisher(model, names, seqs):
    """{name: mean over sequences of vec(G_n) vec(G_n)^T} in float64."""
    fisher = {n: 0.0 for n in names}
    for input_ids, labels in seqs:
        grads = single_sequence_weight_grads(model, names, input_ids, labels)
        for n in names:
            v = grads[n].reshape(-1)
            fisher[n] = fisher[n] + torch.outer(v, v)
    return {n: f / len(seqs) for n, f in fisher.items()}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_lambda_is_the_fisher_diagonal_in_the_eigenbasis(batches, dtype, tol):
    model = tiny_llama(dtype=dtype)
    loss_fn = causal_lm_loss if dtype == torch.float32 else float64_loss
    factors = fit_factors(model, batches, loss_fn, fisher="empirical", dtype=dtype, progress=False)
    reference = exact_fisher(model, LLAMA_MLP, sequences(batches))
    errors = []
    for name in LLAMA_MLP:
        module = factors.modules[name]
        basis = torch.kron(module.eigen.gradient_eigenvectors.double(), module.eigen.activation_eigenvectors.double())
        expected = torch.diagonal(basis.t() @ reference[name] @ basis).reshape(module.shape.matrix_shape)
        errors.append(rel_err(module.lambdas, expected))
        assert module.n_sequences == 7
    print(f"(b) {dtype}: max relative error of Λ = {max(errors):.2e}")
    assert max(errors) < tol


def test_heuristic_and_fixed_damping(batches):
    model = tiny_llama()
    factors = fit_factors(model, batches, fisher="empirical", progress=False)
    for module in factors.modules.values():
        assert module.damping == pytest.approx(0.1 * float(module.lambdas.double().mean()), rel=1e-12)
    fixed = factors.with_damping(0.5)
    assert all(m.damping == 0.5 for m in fixed.modules.values())
    assert fixed.damping_rule == "fixed:0.5"
    assert fit_factors(model, batches, fisher="empirical", damping=0.5, progress=False).damping_rule == "fixed:0.5"


def test_true_fisher_is_reproducible_and_differs_from_empirical(batches):
    model = tiny_llama()
    first = fit_factors(model, batches, fisher="true", seed=3, progress=False)
    again = fit_factors(model, batches, fisher="true", seed=3, progress=False)
    empirical = fit_factors(model, batches, fisher="empirical", progress=False)
    name = LLAMA_MLP[0]
    assert torch.equal(first.modules[name].lambdas, again.modules[name].lambdas)
    assert not torch.allclose(first.modules[name].lambdas, empirical.modules[name].lambdas)
    assert first.fisher == "true" and empirical.fisher == "empirical"
