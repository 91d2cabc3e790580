"""The estimator's arithmetic: hand-computed bytes on a tiny config, and autograd's saved tensors."""

from __future__ import annotations

import pytest
import torch
import transformers

from infra_pl.planner import Settings, estimate
from infra_pl.planner.estimate import (
    COVARIANCE,
    DIRECTIONS,
    EIGEN,
    INSTANCE,
    LAMBDA,
    MEASUREMENT,
    TOKENS,
    logits_chain_bytes,
    saved_activation_bytes,
)
from infra_pl.planner.model import Architecture

# hidden 32, MLP 64, 2 layers, 4 heads of 8, 2 KV heads, vocab 100
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=256)


def tiny_llama(dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.nn.Module:
    config = transformers.LlamaConfig(**TINY)
    config._attn_implementation = "sdpa"
    config.use_cache = False
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(dtype)
    return model.eval()


def test_factor_and_phase_bytes_by_hand():
    est = estimate(tiny_llama(device="meta"), Settings(batch_size=2, seq_len=8, measurements=2, keep_covariance=False))
    assert est.module_names == [f"model.layers.{i}.mlp.{p}_proj" for i in range(2) for p in ("gate", "up", "down")]
    # float32 factors. gate/up: in 32, out 64; down: in 64, out 32.
    assert est.sizes["A (in x in)"] == 2 * 4 * (32 * 32 + 32 * 32 + 64 * 64)
    assert est.sizes["S (out x out)"] == 2 * 4 * (64 * 64 + 64 * 64 + 32 * 32)
    assert est.sizes["Lambda (out x in)"] == 6 * 4 * 64 * 32
    assert est.sizes["directions (2 x out x in)"] == 6 * 2 * 4 * 64 * 32
    # weights: embed 100x32 + lm_head 32x100 (untied) + final norm 32; per layer q 32x32, k/v 32x16,
    # o 32x32, MLP 3 x 32x64, two norms; plus the rotary inv_freq buffers (2 x 4 floats).
    per_layer = 32 * 32 * 2 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32
    assert est.parameters == 2 * 100 * 32 + 32 + 2 * per_layer
    assert est.weight_bytes == 4 * est.parameters + 2 * 4 * 4

    gate = "model.layers.0.mlp.gate_proj"
    cov = est.phases[COVARIANCE]
    assert cov.resident[gate] == 4 * (32 * 32 + 64 * 64)
    # float32 model, float32 factors, no padding, no bias: the captures are the autograd tensors themselves
    assert cov.transient[gate] == 0
    lam = est.phases[LAMBDA]
    # Q_A, Q_S, eigenvalues, Λ
    assert lam.resident[gate] == 4 * (32 * 32 + 64 * 64) + 4 * (32 + 64) + 4 * 64 * 32
    # T (8) x (64² + 32²) < 64·32·96, so tokens are rotated first ([B, T, in + out], then [B, out, in]);
    # squaring and summing over the batch then holds [B, out, in] and [out, in]
    assert lam.transient[gate] == max(2 * 8 * (32 + 64) * 4 + 2 * 64 * 32 * 4, 2 * 64 * 32 * 4 + 64 * 32 * 4)
    assert est.phases[MEASUREMENT].resident[gate] == 2 * 4 * 64 * 32  # ∇f of the M measurements
    assert est.phases[DIRECTIONS].resident[gate] == 4 * (32 * 32 + 64 * 64 + 32 + 64 + 64 * 32) + 3 * 2 * 4 * 64 * 32
    assert est.phases[INSTANCE].resident[gate] == 2 * 4 * 64 * 32
    assert est.phases[INSTANCE].transient[gate] == 2 * 64 * 32 * 4  # "sequence" contraction for M = 2
    assert est.phases[TOKENS].resident[gate] == 2 * 4 * 64 * 32 + 4 * 64 * 32  # directions + zero primal
    # eigh of the 64-wide S: covariances, A's vectors, symmetrised copy + vectors + 2n² workspace,
    # and the previous module's vectors
    assert est.phases[EIGEN].transient[gate] == 8 * (32 * 32 + 64 * 64) + 8 * 32 * 32 + 8 * 4 * 64 * 64 + 8 * 64 * 64

    # keeping A and S on the device (the callbacks now) adds them to the lambda pass and preconditioning only
    kept = estimate(tiny_llama(device="meta"), Settings(batch_size=2, seq_len=8, measurements=2))
    for phase in est.phases:
        extra = 4 * (32 * 32 + 64 * 64) if phase in (LAMBDA, DIRECTIONS) else 0
        assert kept.phases[phase].resident[gate] == est.phases[phase].resident[gate] + extra

    # logits chain: 12 bytes per [B, T, vocab] element; saved activations per token and layer by hand
    assert cov.fixed_transient["logits chain"] == 12 * 16 * 100
    norm = 4 * 32 + 4 + 4 * 32
    layer = 2 * norm + 2 * 4 * 32 + 4 * (32 + 2 * 16) + 4 * 32 + 4 * 4 + 4 * 4 * 64
    expected = 16 * (2 * layer + norm + 4 * 32) + 2 * 8 * 8 * 4
    assert cov.fixed["saved activations"] == expected
    # peak = fixed + resident + max(logits chain, hook overhead + largest transient)
    resident = sum(cov.resident.values())
    fixed = sum(cov.fixed.values())
    assert cov.peak() == fixed + resident + max(12 * 16 * 100, cov.hook_overhead)
    assert cov.peak([gate]) == fixed + cov.resident[gate] + max(12 * 16 * 100, cov.hook_overhead)


def test_bf16_model_counts_capture_copies():
    est = estimate(tiny_llama(torch.bfloat16, device="meta"), Settings(batch_size=2, seq_len=8, measurements=1))
    down = "model.layers.1.mlp.down_proj"  # in 64, out 32
    # the float32 capture of the bf16 input ([16 tokens, 64]) is a new tensor kept until the backward hook
    assert est.phases[INSTANCE].resident[down] == 4 * 32 * 64 + 16 * 64 * 4
    # the float32 cast of the [16, 32] output gradient, and the M = 1 "token" contraction [B, T, M, min(out, in)]
    assert est.phases[INSTANCE].transient[down] == 16 * 32 * 4 + 16 * 1 * 32 * 4
    # the covariance forward hook casts the input: [16, 64] float32
    assert est.phases[COVARIANCE].transient[down] == 16 * 64 * 4


def test_bfloat16_products_change_the_factor_passes_captures():
    """compute_dtype bf16: a bf16 model's captures are its own tensors again; a float32 model's get
    a bf16 cast. The lambda pass keeps bf16 eigenbases and upcasts each rotated gradient."""
    down = "model.layers.1.mlp.down_proj"  # in 64, out 32; 16 tokens
    reduced = Settings(batch_size=2, seq_len=8, measurements=1, compute_dtype=torch.bfloat16)
    bf16_model = estimate(tiny_llama(torch.bfloat16, device="meta"), reduced)
    # no cast and no pending copy: only the [64, 64] bf16 gram before its float32 add
    assert bf16_model.phases[COVARIANCE].transient[down] == 2 * 64 * 64
    fp32_model = estimate(tiny_llama(torch.float32, device="meta"), reduced)
    plain = estimate(tiny_llama(torch.float32, device="meta"), Settings(batch_size=2, seq_len=8, measurements=1))
    assert plain.phases[COVARIANCE].transient[down] == 0  # float32 captures are autograd's tensors
    assert fp32_model.phases[COVARIANCE].transient[down] == 16 * 64 * 2 + 2 * 64 * 64  # bf16 cast of the input + gram
    # lambda: + the pending bf16 input [16, 64], + bf16 Q_A and Q_S
    extra = fp32_model.phases[LAMBDA].resident[down] - plain.phases[LAMBDA].resident[down]
    assert extra == 16 * 64 * 2 + 2 * (64 * 64 + 32 * 32)
    # other phases do not use the option
    assert fp32_model.phases[INSTANCE].transient == plain.phases[INSTANCE].transient


def _saved_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of distinct non-parameter storages autograd saves in one forward (independent reference)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inputs = {t.untyped_storage().data_ptr() for t in batch.values()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in inputs:
            seen[key] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return sum(seen.values())


@pytest.mark.parametrize(
    "dtype,padding", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)], ids=["fp32", "bf16", "padded"]
)
def test_saved_activations_match_autograd(dtype, padding):
    model = tiny_llama(dtype)
    b, t = 2, 24
    ids = torch.randint(0, 100, (b, t), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if padding:
        mask[0, 16:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    settings = Settings(batch_size=b, seq_len=t, padding=padding)
    arch = Architecture.from_config(model.config)
    expected = saved_activation_bytes(arch, settings, torch.empty((), dtype=dtype).element_size())
    assert _saved_bytes(model, batch) == expected


def test_token_pass_carries_one_tangent_until_vmap():
    from infra_pl.influence.tokens import DUAL_LOOP_MAX_DIRECTIONS
    from infra_pl.planner.estimate import jvp_logits_bytes, jvp_tangents

    loop, vmap = Settings(measurements=DUAL_LOOP_MAX_DIRECTIONS), Settings(measurements=DUAL_LOOP_MAX_DIRECTIONS + 1)
    assert jvp_tangents(loop) == 1 and jvp_tangents(vmap) == DUAL_LOOP_MAX_DIRECTIONS + 1
    arch = Architecture.from_config(tiny_llama(device="meta").config)
    one = Settings(batch_size=1, seq_len=10, measurements=1)
    # float32 model, one tangent: primal + tangent logits (8), log-softmax + exp (8), tangent product/result (4)
    assert jvp_logits_bytes(arch, one, 4) == 10 * 100 * 20


def test_logits_chain_covers_sampling_and_backward():
    arch = Architecture.from_config(tiny_llama(device="meta").config)
    base = dict(batch_size=1, seq_len=10)
    assert logits_chain_bytes(arch, Settings(**base, fisher="true"), 4) == 12 * 10 * 100
    assert logits_chain_bytes(arch, Settings(**base, fisher="empirical"), 2) == 12 * 10 * 100


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        Settings(batch_size=0)
    with pytest.raises(ValueError, match="fisher"):
        Settings(fisher="exact")
    with pytest.raises(ValueError, match="activation model knows"):
        Architecture.from_config(transformers.GPT2Config())


def test_lora_tracks_the_adapters_and_counts_their_inputs():
    from infra_pl.planner.model import meta_model

    settings = Settings(batch_size=2, seq_len=8, measurements=1)
    lora = {"r": 4, "alpha": 8, "target_modules": ["gate_proj", "up_proj", "down_proj"]}
    est = estimate(meta_model(tiny_llama(device="meta").config, dtype=torch.bfloat16, lora=lora), settings)
    assert len(est.modules) == 12 and all(".lora_" in m.name for m in est.modules)
    shapes = {m.name[m.name.index("layers."):]: (m.out_features, m.in_dim, m.dtype_bytes) for m in est.modules}
    assert shapes["layers.0.mlp.down_proj.lora_A.default"] == (4, 64, 4)  # float32 adapters on a bf16 model
    assert shapes["layers.0.mlp.down_proj.lora_B.default"] == (32, 4, 4)


@pytest.mark.parametrize("targets", [["gate_proj", "up_proj", "down_proj"], None], ids=["mlp", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_lora_saved_activations_bound_autograd_within_one_layer(targets, dtype):
    """Frozen base + adapters: the estimate is autograd's saved bytes plus at most layer 0's share."""
    from infra_pl.model_builder import LoraOptions, apply_lora

    options = LoraOptions(r=4, alpha=8) if targets is None else LoraOptions(r=4, alpha=8, target_modules=targets)
    model = apply_lora(tiny_llama(dtype), options)
    b, t = 2, 24
    ids = torch.randint(0, 100, (b, t), generator=torch.Generator().manual_seed(0))
    real = _saved_bytes(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    settings = Settings(batch_size=b, seq_len=t)
    est = estimate(model, settings).phases[COVARIANCE].fixed["saved activations"]
    s = torch.empty((), dtype=dtype).element_size()
    arch = Architecture.from_config(model.config)
    one_layer = saved_activation_bytes(arch, settings, s) // arch.layers
    assert real <= est <= real + one_layer
