"""Instance scores and the measurement: hooked single pass vs direct and dense references."""

from __future__ import annotations

import pytest
import torch
from influence_helpers import brute_log_prob_grad, make_batches, rel_err, scenario, sequence_log_probs, tiny_llama, unpadded

from infra_pl.ekfac import fit_factors, per_example_gradients
from infra_pl.influence import (
    Directions,
    choose_contraction,
    instance_scores,
    measurement_directions,
    measurement_gradient,
    measurement_value,
    pairwise_scores,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),  # peft vs transformers 5
    pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning"),  # torch's own JVP decompositions
]


def direct_scores(model, modules, batch, directions) -> torch.Tensor:
    """−⟨v, ∇L(z)⟩ with per-sequence gradients materialised by the EK-FAC package: [B, M]."""
    grads = per_example_gradients(model, batch, modules=modules, dtype=torch.float64)
    return -sum(torch.einsum("moi,boi->bm", directions.per_module[n].double(), grads[n]) for n in modules)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "lora"])
def test_instance_scores_equal_direct_contraction(kind):
    model, modules, batches, directions, _ = scenario(kind)
    worst = 0.0
    for batch in batches:
        expected = direct_scores(model, modules, batch, directions)
        for contraction in ("auto", "sequence", "token"):
            got = instance_scores(model, batch, directions, modules, contraction=contraction)
            assert got.shape == (batch["input_ids"].shape[0], 2)
            worst = max(worst, rel_err(got, expected))
        one = instance_scores(model, batch, directions.select(["code"]), modules)  # M = 1: token path
        worst = max(worst, rel_err(one[:, 0], expected[:, 1]))
    print(f"{kind}: instance vs direct −⟨v, ∇L⟩: {worst:.1e}")
    assert worst < 1e-5
    assert all(p.grad is None for p in model.parameters())


def test_measurement_gradient_and_value_match_autograd():
    model, modules, _, _, _ = scenario("llama")
    measure = make_batches([[10, 7], [8]], seed=1)
    grad = measurement_gradient(model, measure, modules, dtype=torch.float64)
    rows = [unpadded(b, r) for b in measure for r in range(b["input_ids"].shape[0])]
    expected = {n: torch.zeros_like(g) for n, g in grad.items()}
    value = 0.0
    for ids, labels in rows:
        for n, g in brute_log_prob_grad(model, list(modules), ids, labels).items():
            expected[n] += g / len(rows)
        with torch.no_grad():
            log_probs, mask = sequence_log_probs(model, ids, labels)
            value += float((log_probs * mask).sum()) / len(rows)
    assert max(rel_err(grad[n], expected[n]) for n in grad) < 1e-5  # ∇f = +mean ∇log p (= −mean ∇L)
    assert measurement_value(model, measure) == pytest.approx(value, rel=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_instance_scores_equal_dense_ekfac_inverse():
    """Very tiny Llama (768 tracked weights): S(z) = ∇fᵀ H⁻¹ ∇log p(z) with H built as a dense matrix."""
    model = tiny_llama(hidden=8, intermediate=16)
    names = [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    train = make_batches([[10, 6, 8, 4], [9, 10, 5, 7]], seed=3)
    measure = make_batches([[10, 7, 9]], seed=4)
    factors = fit_factors(model, train, fisher="empirical", modules=names, dtype=torch.float64, progress=False)

    # dense block-diagonal H = ⊕_modules (Q_S ⊗ Q_A) diag(Λ + λ) (Q_S ⊗ Q_A)ᵀ over row-major vec(W)
    blocks = []
    for n in names:
        mf = factors.modules[n]
        basis = torch.kron(mf.eigen.gradient_eigenvectors.double(), mf.eigen.activation_eigenvectors.double())
        blocks.append(basis @ torch.diag(mf.lambdas.double().reshape(-1) + mf.damping) @ basis.t())
    dense = torch.block_diag(*blocks)
    assert dense.shape == (768, 768)

    def flat(grads):
        return torch.cat([grads[n].reshape(-1) for n in names])

    measure_rows = [unpadded(measure[0], r) for r in range(3)]
    grad_f = sum(flat(brute_log_prob_grad(model, names, *row)) for row in measure_rows) / len(measure_rows)
    v = torch.linalg.solve(dense, grad_f)

    directions = measurement_directions(
        factors, {"f": measurement_gradient(model, measure, names, dtype=torch.float64)}
    )
    assert rel_err(flat({n: directions.per_module[n][0] for n in names}), v) < 1e-5  # float32 model
    worst = 0.0
    for batch in train:
        got = instance_scores(model, batch, directions, names)[:, 0]
        expected = torch.stack(
            [v @ flat(brute_log_prob_grad(model, names, *unpadded(batch, r))) for r in range(batch["input_ids"].shape[0])]
        )
        worst = max(worst, rel_err(got, expected))
    print(f"instance vs dense EK-FAC inverse: {worst:.1e}")
    assert worst < 1e-5


def test_grad_modes_and_clean_parameters():
    model, modules, batches, directions, _ = scenario("llama")
    batch = batches[1]
    reference = instance_scores(model, batch, directions, modules)
    with torch.no_grad():
        assert torch.equal(instance_scores(model, batch, directions), reference)  # grad enabled inside
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        instance_scores(model, batch, directions, modules)
    assert all(p.grad is None for p in model.parameters())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    with pytest.raises(ValueError, match="differs"):
        wrong = Directions(directions.names, dict(list(directions.per_module.items())[:2]))
        instance_scores(model, batch, wrong, modules)


def test_contraction_choice():
    """Per-token costs B·T·M·out·in, per-sequence B·out·in·(T+M): tokens only for one measurement."""
    assert choose_contraction(512, 1) == "token"
    assert choose_contraction(512, 2) == "sequence"
    assert choose_contraction(1, 8) == "token"


def test_pairwise_equals_query_loss_gradients():
    """pairwise[q, b] = ∇log p(q)ᵀH⁻¹∇log p(z_b) = ∇L(q)ᵀH⁻¹∇L(z_b) (the two minus signs cancel)."""
    model, modules, batches, _, factors = scenario("gpt2")
    queries = make_batches([[10, 7], [9]], seed=5)
    got = pairwise_scores(model, queries, batches[0], factors, dtype=torch.float64)
    query_grads = [factors.precondition(per_example_gradients(model, q, modules=modules, dtype=torch.float64)) for q in queries]
    train_grads = per_example_gradients(model, batches[0], modules=modules, dtype=torch.float64)
    expected = torch.cat(
        [sum(torch.einsum("qoi,boi->qb", qg[n], train_grads[n]) for n in modules) for qg in query_grads]
    )
    assert got.shape == (3, 4)
    assert rel_err(got, expected) < 1e-8
