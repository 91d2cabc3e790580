"""Eq. 9 token scores from one JVP vs per-token backward passes, on Llama, GPT-2 (Conv1D) and LoRA."""

from __future__ import annotations

import pytest
import torch
from influence_helpers import brute_token_scores, rel_err, scenario, unpadded
from torch.nn.attention import SDPBackend, sdpa_kernel

from infra_pl.influence import instance_scores, token_scores, token_scores_by_position

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning"),  # peft vs transformers 5
    pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning"),  # torch's own JVP decompositions
]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "lora"])
def test_token_scores_match_per_token_backward(kind):
    model, modules, batches, directions, _ = scenario(kind)
    names = list(modules)
    worst_token, worst_sum = 0.0, 0.0
    for batch in batches:
        scores = token_scores(model, batch, directions, modules)
        B, T = batch["input_ids"].shape
        assert scores.shape == (2, B, T - 1) and scores.dtype == torch.float32
        # padding and prompt positions are exactly zero
        assert torch.all(scores[:, batch["labels"][:, 1:] == -100] == 0)
        for row in range(B):
            ids, labels = unpadded(batch, row)
            expected = brute_token_scores(model, names, directions, ids, labels)  # [M, L-1]
            got = scores[:, row, : ids.shape[1] - 1]
            worst_token = max(worst_token, rel_err(got, expected))
            assert torch.all(scores[:, row, ids.shape[1] - 1 :] == 0)
        instance = instance_scores(model, batch, directions, modules)  # [B, M]
        worst_sum = max(worst_sum, rel_err(scores.sum(-1).t(), instance))
    print(f"{kind}: token vs per-token backward {worst_token:.1e}, sum vs instance {worst_sum:.1e}")
    # float32 with two different summation orders (one JVP vs a backward per token): 1.03e-5 was
    # seen for LoRA on an AMX CPU whose kernels sum in another order; a wrong formula is off by O(1).
    assert worst_token < 5e-5
    assert worst_sum < 1e-4


def test_vmap_and_loop_agree_and_grad_modes(monkeypatch):
    import infra_pl.influence.tokens as tokens_module

    model, modules, batches, directions, _ = scenario("llama")
    batch = batches[0]
    reference = token_scores(model, batch, directions, modules)  # dual-tensor passes, one per direction
    with monkeypatch.context() as patched:
        patched.setattr(tokens_module, "DUAL_LOOP_MAX_DIRECTIONS", 0)  # force torch.func.vmap
        assert torch.allclose(token_scores(model, batch, directions, modules), reference, atol=1e-7)
    assert torch.allclose(token_scores(model, batch, directions, modules, vectorize=False), reference, atol=1e-7)
    assert torch.allclose(token_scores(model, batch, directions, modules, chunk_size=1), reference, atol=1e-7)
    with torch.no_grad():
        assert torch.equal(token_scores(model, batch, directions), reference)  # modules from the directions
    with torch.inference_mode():  # torch.func.jvp keeps its tangents here (forward_ad duals would not)
        assert torch.allclose(token_scores(model, batch, directions, modules), reference, atol=1e-7)
    single = directions.select(["code"])
    assert torch.allclose(token_scores(model, batch, single, modules)[0], reference[1], atol=1e-7)


def test_sdpa_model_runs_and_state_is_restored():
    """The model uses SDPA attention; the pass forces the MATH kernel and leaves the model untouched."""
    model, modules, batches, directions, _ = scenario("llama")
    assert model.config._attn_implementation == "sdpa"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    model.train()
    try:
        # The fused kernels have no forward-mode rule: a bare JVP through SDPA fails on CPU ...
        zeros = torch.zeros(1)

        def f(x):
            q = torch.randn(1, 2, 4, 8) * x
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)

        with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION), pytest.raises((NotImplementedError, RuntimeError)):
            torch.func.jvp(f, (zeros + 1,), (zeros + 1,))
        # ... while token_scores overrides whatever backend the caller selected.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            scores = token_scores(model, batches[1], directions, modules)
        assert torch.isfinite(scores).all() and scores.abs().max() > 0
        assert all(m.training for m in model.modules())  # training flags restored
    finally:
        model.eval()
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_position_split_is_a_different_decomposition_with_the_same_sum():
    model, modules, batches, directions, _ = scenario("llama")
    batch = batches[0]
    by_position = token_scores_by_position(model, batch, directions, modules)  # [M, B, T]
    by_target = token_scores(model, batch, directions, modules)  # [M, B, T-1]
    assert by_position.shape == by_target.shape[:2] + (batch["input_ids"].shape[1],)
    assert torch.all(by_position[:, batch["attention_mask"] == 0] == 0)
    instance = instance_scores(model, batch, directions, modules)
    assert rel_err(by_position.sum(-1).t(), instance) < 1e-5
    assert rel_err(by_target.sum(-1).t(), instance) < 1e-4
    # same total, different split (the last real position carries no target but acts on none either)
    assert not torch.allclose(by_position[..., 1:], by_target, atol=1e-3 * float(by_target.abs().max()))
