"""The compared methods on tiny cases: identity, K-FAC (vs an explicit inverse), damping, BM25, kronfluence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infra_pl.ekfac import fit_factors, per_example_gradients
from infra_pl.influence import (
    instance_scores,
    measurement_directions,
    measurement_gradient,
    query_directions,
)
from infra_pl.lds.baselines import (
    BM25Scores,
    IdentityPreconditioner,
    bm25_tokens,
    kfac_factors,
    scaled_damping,
)
from tests.lds.lds_helpers import batches, features, tiny_llama

F64 = torch.float64


@pytest.fixture(scope="module")
def fitted():
    model = tiny_llama().double()
    train = features(24, seed=1)
    factors = fit_factors(model, batches(train, 8), fisher="empirical", dtype=F64, progress=False)
    return model, train, factors


def test_identity_direction_is_the_measurement_gradient(fitted):
    model, train, _ = fitted
    grad = measurement_gradient(model, batches(train[:5], 5), dtype=F64)
    directions = measurement_directions(IdentityPreconditioner(), {"f": grad})
    assert grad and set(directions.per_module) == set(grad)
    for name, value in grad.items():
        assert torch.equal(directions.per_module[name][0], value)


def test_identity_scores_are_plain_gradient_dot_products(fitted):
    model, train, _ = fitted
    modules = {n: dict(model.named_modules())[n] for n in fitted[2].modules}
    queries, items = batches(train[:3], 3), batches(train[3:9], 6)[0]
    directions = query_directions(model, queries, IdentityPreconditioner(), modules=modules, dtype=F64)
    scores = instance_scores(model, items, directions, modules).t()  # [Q, B]
    gq = per_example_gradients(model, queries[0], modules=modules, dtype=F64)
    gz = per_example_gradients(model, items, modules=modules, dtype=F64)
    expected = sum(torch.einsum("qoi,boi->qb", gq[n], gz[n]) for n in modules)  # ∇L(q)·∇L(z) = ∇log p(q)·∇log p(z)
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-12)


def test_kfac_equals_the_explicit_damped_kronecker_inverse(fitted):
    _, _, factors = fitted
    kfac = kfac_factors(factors)
    gen = torch.Generator().manual_seed(3)
    for name, module in factors.modules.items():
        a, s = module.activation_covariance.double(), module.gradient_covariance.double()
        out, inp = module.shape.matrix_shape
        damping = 0.1 * float(torch.diagonal(s).mean() * torch.diagonal(a).mean())  # 0.1·mean(eig S ⊗ eig A)
        assert kfac.modules[name].damping == pytest.approx(damping, rel=1e-9)
        hessian = torch.kron(s, a) + damping * torch.eye(out * inp, dtype=F64)  # row-major vec(G): o·in + i
        grad = torch.randn(out, inp, generator=gen, dtype=F64)
        expected = torch.linalg.solve(hessian, grad.reshape(-1)).reshape(out, inp)
        torch.testing.assert_close(kfac.precondition({name: grad})[name], expected, rtol=1e-7, atol=1e-12)


def test_kfac_differs_from_ekfac_and_damping_scale_multiplies(fitted):
    _, _, factors = fitted
    name = next(iter(factors.modules))
    grad = torch.randn(*factors.modules[name].shape.matrix_shape, dtype=F64)
    ekfac, kfac = factors.precondition({name: grad})[name], kfac_factors(factors).precondition({name: grad})[name]
    assert (ekfac - kfac).norm() > 1e-3 * ekfac.norm()  # the eigenvalue correction matters
    torch.testing.assert_close(scaled_damping(factors, 1.0).precondition({name: grad})[name], ekfac)
    scaled = scaled_damping(factors, 10.0)
    for n, m in factors.modules.items():
        assert scaled.modules[n].damping == pytest.approx(10.0 * m.damping)
    assert factors.modules[name].damping == pytest.approx(factors.with_damping(None).modules[name].damping)  # original untouched
    with pytest.raises(ValueError, match="damping scale"):
        scaled_damping(factors, 0.0)


def test_bm25_ranks_an_exact_duplicate_first():
    train = [
        "Compute 7+8. 7+8=15. The answer is 15.",
        "def f(x):\n    return x * 3",
        "Compute 9*4+94. 9*4=36, then 36+94=130.",
        "Write a function that returns the list reversed.",
        "Compute 2+2. The answer is 4.",
    ]
    bm25 = BM25Scores(train)
    scores = bm25.pairwise([train[2], train[3]])
    assert scores.shape == (2, 5)
    assert int(np.argmax(scores[0])) == 2 and int(np.argmax(scores[1])) == 3
    assert bm25_tokens("Add 12+3!") == ["add", "1", "2", "+", "3", "!"]


def test_kronfluence_pairwise_matches_ours_with_the_same_fisher(fitted):
    pytest.importorskip("kronfluence")
    from infra_pl.lds.kronfluence_ref import kronfluence_pairwise

    model = tiny_llama()  # float32, like kronfluence's defaults here
    train, query = features(24, seed=1), features(4, seed=2)
    for i, f in enumerate(query):
        f["index"] = i
    factors = fit_factors(model, batches(train, 8), fisher="empirical", progress=False)
    modules = {n: dict(model.named_modules())[n] for n in factors.modules}
    directions = query_directions(model, batches(query, 4), factors, modules=modules)
    ours = torch.cat([instance_scores(model, b, directions, modules) for b in batches(train, 8)]).t().double().numpy()
    theirs = kronfluence_pairwise(model, list(modules), train, query, pad_token_id=0, fisher="empirical", batch_size=8)
    assert theirs.shape == ours.shape == (4, 24)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9999
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(ours).max()
