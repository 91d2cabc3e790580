"""Saving/loading factors, compatibility checks, and non-finite factors."""

from __future__ import annotations

import json

import pytest
import torch
from ekfac_helpers import LLAMA_MLP, tiny_llama

from infra_pl.ekfac import (
    Factors,
    FactorsMismatchError,
    NonFiniteFactorError,
    eigendecompose,
    find_tracked_modules,
    fit_covariance,
    fit_factors,
)

TRAIN_IDS = ["ex-3", "ex-1", "ex-2"]


@pytest.fixture(scope="module")
def fitted(batches):
    model = tiny_llama()
    return model, fit_factors(model, batches, fisher="true", progress=True, train_ids=TRAIN_IDS)


def test_save_load_round_trip(fitted, tmp_path):
    model, factors = fitted
    factors.save(tmp_path / "factors")
    files = sorted(p.name for p in (tmp_path / "factors").iterdir())
    assert files == ["covariance.safetensors", "eigen.safetensors", "lambda.safetensors", "manifest.json"]
    manifest = json.loads((tmp_path / "factors" / "manifest.json").read_text())
    assert manifest["fisher"] == "true" and manifest["dtype"] == "float32"
    assert manifest["damping_rule"].startswith("heuristic:0.1")
    assert list(manifest["modules"]) == LLAMA_MLP
    assert manifest["modules"][LLAMA_MLP[0]]["n_sequences"] == 7
    assert manifest["model_fingerprint"] and manifest["data_fingerprint"]

    loaded = Factors.load(tmp_path / "factors")
    assert list(loaded.modules) == list(factors.modules)
    for name, module in factors.modules.items():
        other = loaded.modules[name]
        assert other.shape == module.shape and other.damping == module.damping
        assert (other.n_tokens, other.n_sequences) == (module.n_tokens, module.n_sequences)
        for attr in ("activation_covariance", "gradient_covariance", "lambdas"):
            assert torch.equal(getattr(other, attr), getattr(module, attr))
        for key, value in vars(module.eigen).items():
            assert torch.equal(getattr(other.eigen, key), value)
    grads = {n: torch.randn(2, *m.shape.matrix_shape) for n, m in factors.modules.items()}
    for name, value in loaded.precondition(grads).items():
        assert torch.equal(value, factors.precondition(grads)[name])
    assert loaded.check_compatible(model, train_ids=reversed(TRAIN_IDS)) == []  # id order is irrelevant


def test_check_compatible_names_what_differs(fitted, batches):
    model, factors = fitted
    changed = tiny_llama(seed=1)
    with pytest.raises(FactorsMismatchError, match=r"weight fingerprint differs for modules \['model.layers.0.mlp"):
        factors.check_compatible(changed)
    with pytest.raises(FactorsMismatchError, match="module names differ.*model.layers.0.self_attn.q_proj"):
        factors.check_compatible(model, modules=LLAMA_MLP + ["model.layers.0.self_attn.q_proj"])
    with pytest.raises(FactorsMismatchError, match=r"not in model: \['model.layers.1.mlp.down_proj'\]"):
        factors.check_compatible(model, modules=LLAMA_MLP[:-1])
    with pytest.raises(FactorsMismatchError, match="training-set fingerprint"):
        factors.check_compatible(model, train_ids=["ex-1", "ex-2"])
    with torch.no_grad():
        edited = tiny_llama()
        edited.model.embed_tokens.weight.mul_(2.0)  # untracked parameter
    with pytest.raises(FactorsMismatchError, match="outside the tracked modules"):
        factors.check_compatible(edited)
    with pytest.warns(UserWarning, match="weight fingerprint differs"):
        problems = factors.check_compatible(changed, strict=False)
    assert problems


def test_check_compatible_names_shape_changes(fitted):
    _, factors = fitted
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=50,
        )
    )
    with pytest.raises(FactorsMismatchError, match=r"module shapes differ.*gate_proj \(32, 16\) vs \(24, 16\)"):
        factors.check_compatible(wider)


def test_nan_in_a_factor_names_the_module(batches):
    model = tiny_llama()
    modules = find_tracked_modules(model)
    state = fit_covariance(model, batches, modules, fisher="empirical", progress=False)
    state.gradient_sums["model.layers.1.mlp.up_proj"][3, 3] = float("nan")
    with pytest.raises(NonFiniteFactorError, match="gradient covariance S of module 'model.layers.1.mlp.up_proj'"):
        eigendecompose(state)
