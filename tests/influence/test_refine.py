"""CG refinement of the measurement directions equals the explicit damped inverse (block-diagonal and full).

The reference forms per-sequence gradients with plain autograd (``per_example_gradients``), builds
the damped Fisher F + λ as a matrix, and solves it with ``torch.linalg.solve``: nothing of the
refinement's hooks or products is shared.
"""

from __future__ import annotations

import pytest
import torch

from infra_pl.ekfac import find_tracked_modules, fit_factors
from infra_pl.ekfac.gradients import per_example_gradients
from infra_pl.ekfac.loss import causal_lm_loss
from infra_pl.influence.refine import (
    FisherProduct,
    RefinementError,
    conjugate_gradient,
    fisher_product,
    refine_directions,
    stack_gradients,
)
from infra_pl.runner import InProcessRunner
from tests.influence.influence_helpers import make_batches, tiny_llama

F64 = torch.float64


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(hidden=8, intermediate=16).double()
    batches = make_batches([[10, 7, 9], [8, 10, 6], [9, 9, 5]])
    tracked = find_tracked_modules(model)
    factors = fit_factors(model, batches, fisher="empirical", dtype=F64, progress=False, damping=1e-2)
    grads = [per_example_gradients(model, b, causal_lm_loss, tracked, dtype=F64) for b in batches]
    per_seq = {n: torch.cat([g[n] for g in grads]) for n in tracked}  # [N, out, in]
    queries = make_batches([[8, 9]], seed=5)
    q = per_example_gradients(model, queries[0], causal_lm_loss, tracked, dtype=F64)
    b = {"f1": {n: -q[n][0] for n in tracked}, "f2": {n: -q[n].mean(0) for n in tracked}}
    return model, batches, tracked, factors, per_seq, b


def explicit_solution(per_seq, factors, b, blocks):
    """(F + λ)⁻¹ b with F = (1/N) Σ G_n G_nᵀ as a dense matrix (block-diagonal or full)."""
    names = list(per_seq)
    flat = torch.cat([per_seq[n].flatten(1) for n in names], dim=1)  # [N, P]
    sizes = [per_seq[n][0].numel() for n in names]
    fisher = flat.t() @ flat / flat.shape[0]
    if blocks == "module":
        mask = torch.block_diag(*[torch.ones(s, s, dtype=F64) for s in sizes])
        fisher = fisher * mask
    damping = torch.cat([torch.full((s,), factors.modules[n].damping, dtype=F64) for n, s in zip(names, sizes)])
    out = {}
    for measurement, grads in b.items():
        rhs = torch.cat([grads[n].flatten() for n in names])
        solved = torch.linalg.solve(fisher + torch.diag(damping), rhs)
        out[measurement] = dict(zip(names, [t.view_as(per_seq[n][0]) for t, n in zip(torch.split(solved, sizes), names)]))
    return out


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("blocks", ["module", "all"])
def test_fisher_vector_product_equals_the_dense_fisher(setup, blocks):
    model, batches, tracked, factors, per_seq, _ = setup
    product = FisherProduct(model, tracked, causal_lm_loss, "empirical", blocks=blocks, dtype=F64)
    torch.manual_seed(0)
    u = {n: torch.randn(2, *per_seq[n].shape[1:], dtype=F64) for n in tracked}
    zero = {n: 0.0 for n in tracked}
    got, count = fisher_product(InProcessRunner(progress=False), lambda: batches, product, u, zero)
    assert count == 9
    names = list(tracked)
    flat = torch.cat([per_seq[n].flatten(1) for n in names], dim=1)
    dots = {n: torch.einsum("noi,moi->nm", per_seq[n], u[n]) for n in names}
    total = sum(dots.values())
    for n in names:
        s = total if blocks == "all" else dots[n]
        expected = torch.einsum("nm,noi->moi", s, per_seq[n]) / flat.shape[0]
        assert rel(got[n], expected) < 1e-12


@pytest.mark.parametrize("blocks", ["module", "all"])
def test_cg_to_convergence_equals_the_explicit_damped_inverse(setup, blocks):
    model, batches, tracked, factors, per_seq, b = setup
    product = FisherProduct(model, tracked, causal_lm_loss, "empirical", blocks=blocks, dtype=F64)
    result = refine_directions(InProcessRunner(progress=False), lambda: batches, factors, product, stack_gradients(b), iterations=300,
                               tolerance=1e-11)
    assert result.stop_reason == "tolerance", result.residuals
    exact = explicit_solution(per_seq, factors, b, blocks)
    for m, measurement in enumerate(result.directions.names):
        got = torch.cat([result.directions.per_module[n][m].flatten() for n in tracked])
        want = torch.cat([exact[measurement][n].flatten() for n in tracked])
        assert rel(got, want) < 1e-6
    # EK-FAC alone (the start) is further from the exact solution, and the residuals fall.
    first = {n: r[0] for n, r in result.residuals.items()}
    assert all(result.residuals[n][-1] < first[n] * 1e-6 for n in first)


def test_zero_iterations_is_ekfac_and_reports_its_residual(setup):
    model, batches, tracked, factors, per_seq, b = setup
    product = FisherProduct(model, tracked, causal_lm_loss, "empirical", dtype=F64)
    result = refine_directions(InProcessRunner(progress=False), lambda: batches, factors, product, stack_gradients(b), iterations=0,
                               tolerance=1e-9)
    ekfac = factors.precondition(b["f1"])
    for n in tracked:
        assert torch.allclose(result.directions.per_module[n][0], ekfac[n].to(F64))
    assert result.stop_reason == "iterations" and result.iterations == 0 and result.residuals["f1"][0] > 1e-3


def test_true_fisher_products_sample_the_same_labels_every_time(setup):
    model, batches, tracked, factors, per_seq, _ = setup
    product = FisherProduct(model, tracked, causal_lm_loss, "true", seed=3, dtype=F64)
    u = {n: torch.ones(1, *per_seq[n].shape[1:], dtype=F64) for n in tracked}
    first, _ = product.batch(batches[0], u)
    torch.manual_seed(123)  # the global RNG does not matter: each sequence has its own seed
    second, _ = product.batch(batches[0], u)
    assert all(torch.equal(first[n], second[n]) for n in tracked)
    empirical, _ = FisherProduct(model, tracked, causal_lm_loss, "empirical", dtype=F64).batch(batches[0], u)
    assert any(not torch.allclose(first[n], empirical[n]) for n in tracked)


def test_non_positive_curvature_and_nan_are_named_errors():
    b = {"m": torch.ones(1, 2, 2, dtype=F64)}
    identity = lambda v: {n: t.clone() for n, t in v.items()}  # noqa: E731
    with pytest.raises(RefinementError, match="non-positive curvature"):
        conjugate_gradient(lambda v: {n: -2 * t for n, t in v.items()}, identity, b, ["f"], 5, 1e-12)
    with pytest.raises(RefinementError, match="residual of measurement 'f' is nan"):
        conjugate_gradient(lambda v: {n: t * float("nan") for n, t in v.items()}, identity, b, ["f"], 5, 1e-12)
