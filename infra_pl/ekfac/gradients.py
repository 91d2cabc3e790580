"""Per-sequence weight gradients built from captured activations and output gradients.

For a linear layer y_t = W a_t the gradient of a sequence's loss is G_n = sum_t g_t a_t^T, with g_t
= dL/dy_t: an einsum over the tokens of one sequence. Computing it from the hooks instead of
running one backward per sequence gives all B per-sequence gradients of a batch from one backward.

Sign convention: these are gradients of the *loss* L(z) = summed target-token NLL, i.e.
∇L(z) = −∇log p(z). The influence score S(z) = ∇f^T H⁻¹ ∇log p(z) is therefore
``−(precondition(∇f) · per_example_gradients(z))``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import resolve_modules
from infra_pl.ekfac.passes import capture_pass, eval_mode


def sequence_gradients(activations: torch.Tensor, output_grads: torch.Tensor) -> torch.Tensor:
    """[B, T, in(+1)] activations and [B, T, out] output gradients -> [B, out, in(+1)] gradients."""
    return torch.bmm(output_grads.transpose(1, 2), activations)  # = einsum("bto,bti->boi"), without copies


def per_example_gradients(
    model: nn.Module,
    batch: Mapping[str, Any],
    loss_fn: LossFn = causal_lm_loss,
    modules: Mapping[str, nn.Module] | str | Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """∇_W L(z_n) for every sequence n of the batch and tracked module: {name: [B, out, in(+1)]}.

    The gradient is of the summed NLL with the batch's own labels (never sampled), in the
    canonical [out, in(+1)] layout (bias gradient as the last column; Conv1D transposed), computed
    in eval mode. No parameter ``.grad`` is written.
    """
    tracked = resolve_modules(model, modules)
    grads: dict[str, torch.Tensor] = {}

    def keep(name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
        grads[name] = sequence_gradients(activations, output_grads)

    capture = Capture(tracked, on_pair=keep, dtype=dtype)
    with eval_mode(model), capture:
        capture_pass(model, batch, loss_fn, capture, sample_labels=False)
    return {name: grads[name] for name in tracked}
