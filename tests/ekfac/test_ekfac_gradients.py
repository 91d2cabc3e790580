"""Per-example gradients and the default loss: values, layout, sign, and no side effects."""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import (
    LLAMA_MLP,
    make_batches,
    rel_err,
    sequences,
    single_sequence_weight_grads,
    summed_nll,
    tiny_gpt2,
    tiny_llama,
)

from infra_pl.ekfac import (
    Capture,
    causal_lm_loss,
    find_tracked_modules,
    per_example_gradients,
    sample_target_labels,
    sequence_gradients,
)


def test_causal_lm_loss_is_summed_target_nll(batches):
    model = tiny_llama()
    batch = batches[0]
    with torch.no_grad():
        losses = causal_lm_loss(model, batch, sample_labels=False)
    assert losses.shape == (4,) and losses.dtype == torch.float32
    for row, (input_ids, labels) in enumerate(sequences([batch])):
        with torch.no_grad():
            expected = summed_nll(model(input_ids=input_ids).logits, labels)
        assert float(losses[row]) == pytest.approx(float(expected), rel=1e-5)


def test_sampled_labels_only_replace_targets():
    logits = torch.randn(3, 6, 11)
    labels = torch.tensor([[-100, -100, 4, 5, -100, -100], [-100, 1, 2, 3, 4, 5], [-100] * 6])
    torch.manual_seed(0)
    sampled = sample_target_labels(logits, labels)
    assert torch.equal(sampled.eq(-100), labels.eq(-100))
    assert sampled[labels.ne(-100)].max() < 11


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_per_example_gradients_match_autograd_per_sequence(builder, batches):
    model = builder()
    names = list(find_tracked_modules(model))
    grads = per_example_gradients(model, batches[0])
    errors = []
    for row, (input_ids, labels) in enumerate(sequences(batches[:1])):
        expected = single_sequence_weight_grads(model, names, input_ids, labels)
        errors += [rel_err(grads[n][row], expected[n]) for n in names]
    print(f"per-example gradients ({builder.__name__}): max relative error = {max(errors):.2e}")
    assert max(errors) < 1e-5
    assert all(p.grad is None for p in model.parameters())


def test_gradients_are_of_the_loss_not_the_log_likelihood(batches):
    """A small step against the returned gradient lowers that sequence's loss."""
    model = tiny_llama()
    name = LLAMA_MLP[1]
    grads = per_example_gradients(model, batches[0], modules=[name])
    module = dict(model.named_modules())[name]
    before = causal_lm_loss(model, batches[0], False)[0].item()
    with torch.no_grad():
        module.weight -= 1e-1 * grads[name][0] / grads[name][0].norm()
    assert causal_lm_loss(model, batches[0], False)[0].item() < before


def test_frozen_model_and_training_mode_are_handled():
    """Gradients reach tracked layers even if no parameter requires grad; train mode is restored."""
    model = tiny_gpt2().train()
    model.requires_grad_(False)
    batch = make_batches([[8, 5]])[0]
    grads = per_example_gradients(model, batch)
    assert all(g.abs().sum() > 0 for g in grads.values())
    assert model.training and model.transformer.h[0].mlp.dropout.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("driver", ["grad_on_weights", "backward"])
def test_capture_works_with_any_backward_driver(batches, driver):
    """A callback may drive the backward itself: grad w.r.t. weights, or loss.backward()."""
    model = tiny_llama()
    modules = find_tracked_modules(model)
    expected = per_example_gradients(model, batches[1])
    seen: dict[str, torch.Tensor] = {}
    capture = Capture(modules, on_pair=lambda n, a, g: seen.__setitem__(n, sequence_gradients(a, g)))
    with capture:
        capture.start_batch(batches[1]["attention_mask"])
        loss = causal_lm_loss(model, batches[1], sample_labels=False).sum()
        if driver == "grad_on_weights":
            torch.autograd.grad(loss, [m.weight for m in modules.values()])
            assert all(p.grad is None for p in model.parameters())
        else:
            loss.backward()
            model.zero_grad(set_to_none=True)
        capture.finish_batch()
    assert list(seen) == list(reversed(list(modules)))  # backward order
    for name in modules:
        assert rel_err(seen[name], expected[name]) < 1e-6
