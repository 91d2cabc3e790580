"""Log-likelihood pieces shared by SFT training and attribution.

One definition of "the log-probability of the target tokens" is used everywhere, so the SFT
loss, the measurement f and the per-example training loss L(z) cannot drift apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infra_pl.data.tokenize import IGNORE_INDEX


def target_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log p(label_t | tokens_<t), shifted; returns ``(log_probs, mask)`` of shape [B, T-1].

    Logits are upcast to float32 before the softmax: bf16 log-softmax over a large vocabulary
    loses enough precision to change influence rankings.
    """
    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets.ne(IGNORE_INDEX)
    safe_targets = targets.masked_fill(~mask, 0)
    log_probs = torch.log_softmax(shifted_logits, dim=-1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    return log_probs * mask, mask


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L(z): summed NLL over the target (assistant) tokens of each sequence, shape [B]."""
    log_probs, _ = target_log_probs(logits, labels)
    return -log_probs.sum(dim=-1)


def mean_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SFT loss: NLL summed over all target tokens of the batch, divided by their count.

    Returns ``(loss, n_tokens)``. Dividing by the batch's token count (not averaging per-sequence
    means) weights every target token equally, as Hugging Face's causal-LM loss does.
    """
    targets = labels[:, 1:]
    n_tokens = targets.ne(IGNORE_INDEX).sum()
    loss = F.cross_entropy(
        logits[:, :-1, :].float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    ) / n_tokens.clamp(min=1)
    return loss, n_tokens
