"""(c) preconditioning equals solving with the explicit EK-FAC matrix, on Llama, GPT-2 and LoRA.

The explicit matrix is (Q_S ⊗ Q_A) diag(Λ + λ) (Q_S ⊗ Q_A)^T acting on row-major vec([out, in]).
"""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import LLAMA_MLP, rel_err, tiny_gpt2, tiny_llama, tiny_lora_llama

from infra_pl.ekfac import find_tracked_modules, fit_factors, per_example_gradients


def explicit_solve(module, grad: torch.Tensor) -> torch.Tensor:
    basis = torch.kron(module.eigen.gradient_eigenvectors.double(), module.eigen.activation_eigenvectors.double())
    diagonal = module.lambdas.double().reshape(-1) + module.damping
    matrix = basis @ torch.diag(diagonal) @ basis.t()
    return torch.linalg.solve(matrix, grad.double().reshape(-1)).reshape(grad.shape)


def check_against_explicit(factors, grads, tol):
    """Max relative error of precondition() vs the explicit solve, per example and module."""
    preconditioned = factors.precondition(grads)
    errors = []
    for name, batch_grads in grads.items():
        assert preconditioned[name].shape == batch_grads.shape
        for n in range(batch_grads.shape[0]):
            errors.append(rel_err(preconditioned[name][n], explicit_solve(factors.modules[name], batch_grads[n])))
    assert max(errors) < tol, max(errors)
    return max(errors)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-9)])
def test_llama_precondition_matches_explicit_inverse(batches, dtype, tol):
    """float64 factors: the algebra is exact; float32 factors: eigenvectors orthogonal to ~1e-7."""
    model = tiny_llama()
    factors = fit_factors(model, batches, fisher="empirical", dtype=dtype, progress=False)
    grads = per_example_gradients(model, batches[0])
    error = check_against_explicit(factors, grads, tol)
    print(f"(c) llama, {dtype} factors: max relative error = {error:.2e}")
    # an unbatched [out, in] gradient goes through the same path
    single = factors.precondition({LLAMA_MLP[0]: grads[LLAMA_MLP[0]][0]})[LLAMA_MLP[0]]
    assert torch.allclose(single, factors.precondition(grads)[LLAMA_MLP[0]][0])


def test_gpt2_conv1d_with_bias(batches):
    model = tiny_gpt2()
    modules = find_tracked_modules(model)
    assert list(modules) == [f"transformer.h.{i}.mlp.{p}" for i in range(2) for p in ("c_fc", "c_proj")]
    factors = fit_factors(model, batches, fisher="true", dtype=torch.float64, progress=False)
    fc, proj = factors.modules["transformer.h.0.mlp.c_fc"], factors.modules["transformer.h.0.mlp.c_proj"]
    assert fc.lambdas.shape == (64, 17) and fc.activation_covariance.shape == (17, 17)  # bias column
    assert proj.lambdas.shape == (16, 65) and proj.gradient_covariance.shape == (16, 16)
    assert fc.activation_covariance[-1, -1] == pytest.approx(1.0)  # constant-1 column, padding masked
    error = check_against_explicit(factors, per_example_gradients(model, batches[1]), 1e-9)
    print(f"(c) gpt2 conv1d, float64 factors: max relative error = {error:.2e}")


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft vs transformers 5
def test_lora_llama_tracks_adapters_only(batches):
    model = tiny_lora_llama()
    modules = find_tracked_modules(model)
    assert len(modules) == 12 and all(".mlp." in n and (".lora_A." in n or ".lora_B." in n) for n in modules)
    factors = fit_factors(model, batches, fisher="true", dtype=torch.float64, progress=False)
    a_name = "base_model.model.model.layers.0.mlp.down_proj.lora_A.default"
    b_name = "base_model.model.model.layers.0.mlp.down_proj.lora_B.default"
    assert factors.modules[a_name].lambdas.shape == (4, 32)
    assert factors.modules[b_name].lambdas.shape == (16, 4)
    error = check_against_explicit(factors, per_example_gradients(model, batches[0]), 1e-9)
    print(f"(c) lora llama, float64 factors: max relative error = {error:.2e}")
    assert all(p.grad is None for p in model.parameters())
