"""Tracked-module discovery and the canonical [out, in(+1)] layout."""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import LLAMA_MLP, tiny_gpt2, tiny_llama, tiny_lora_llama

from infra_pl.ekfac import find_tracked_modules, layer_shape, split_weight_bias, weight_matrix


def test_include_regex_and_list():
    model = tiny_llama()
    assert list(find_tracked_modules(model, r"layers\.1\.mlp\.down")) == ["model.layers.1.mlp.down_proj"]
    assert list(find_tracked_modules(model, r"self_attn\.q_proj")) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    names = [LLAMA_MLP[3], LLAMA_MLP[0]]
    assert list(find_tracked_modules(model, names)) == [LLAMA_MLP[0], LLAMA_MLP[3]]  # model order


def test_clear_errors_list_candidates():
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"no module matched.*model\.layers\.0\.self_attn\.q_proj"):
        find_tracked_modules(model, "nothing_like_this")
    with pytest.raises(ValueError, match="not found in the model.*model.layers.9.mlp.up_proj"):
        find_tracked_modules(model, ["model.layers.9.mlp.up_proj"])
    with pytest.raises(ValueError, match="not nn.Linear/Conv1D.*model.layers.0.mlp"):
        find_tracked_modules(model, ["model.layers.0.mlp"])
    with pytest.raises(ValueError, match="no module matched"):
        find_tracked_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft vs transformers 5
def test_lora_default_excludes_frozen_base_layers():
    names = list(find_tracked_modules(tiny_lora_llama()))
    assert "base_model.model.model.layers.0.mlp.up_proj.lora_A.default" in names
    assert not any("base_layer" in n or "self_attn" in n for n in names)


def test_conv1d_layout_round_trip():
    model = tiny_gpt2()
    module = dict(model.named_modules())["transformer.h.0.mlp.c_fc"]
    shape = layer_shape(module)
    assert (shape.out_features, shape.in_features, shape.has_bias) == (64, 16, True)
    matrix = weight_matrix(module)
    assert matrix.shape == (64, 17)
    x = torch.randn(3, 16)
    assert torch.allclose(module(x), x @ matrix[:, :16].t() + matrix[:, 16], atol=1e-6)
    weight, bias = split_weight_bias(module, matrix)
    assert torch.equal(weight, module.weight) and torch.equal(bias, module.bias)
