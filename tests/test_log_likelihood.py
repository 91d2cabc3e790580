"""The shared log-likelihood pieces agree with each other and with a plain reference."""

import torch
import torch.nn.functional as F

from infra_pl.log_likelihood import mean_token_nll, next_token_targets, per_example_nll, target_log_probs


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :3] = -100  # a masked prompt
    labels[2, 5:] = -100  # padding at the end
    return logits, labels


def _reference_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed NLL with an explicit loop over positions (no shared code)."""
    out = []
    for b in range(labels.shape[0]):
        total = logits.new_zeros(())
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target != -100:
                total = total - torch.log_softmax(logits[b, t], dim=-1)[target]
        out.append(total)
    return torch.stack(out)


def test_next_token_targets_shift_left_and_pad() -> None:
    labels = torch.tensor([[5, 6, -100, 8]])
    assert next_token_targets(labels).tolist() == [[6, -100, 8, -100]]


def test_per_example_nll_matches_loop_and_target_log_probs_values_and_gradients() -> None:
    logits, labels = _case()
    ours = per_example_nll(logits, labels)
    ref = _reference_nll(logits, labels)
    via_log_probs = -target_log_probs(logits, labels)[0].sum(-1)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    assert torch.allclose(ours.double(), via_log_probs.double(), atol=1e-6)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((ours.double() * weights).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
    assert g_ours[:, -1].abs().max() == 0  # the last position predicts nothing


def test_mean_token_nll_is_the_token_mean_of_cross_entropy() -> None:
    logits, labels = _case(1)
    loss, n_tokens = mean_token_nll(logits, labels)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11).float(), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert int(n_tokens) == int(labels[:, 1:].ne(-100).sum())
    assert torch.allclose(loss, expected, atol=1e-6)


def test_bf16_logits_are_upcast_before_the_softmax() -> None:
    logits, labels = _case(2)
    low = logits.detach().to(torch.bfloat16)
    assert per_example_nll(low, labels).dtype == torch.float32
    assert torch.allclose(per_example_nll(low, labels).double(), _reference_nll(low.double(), labels), atol=1e-4)
