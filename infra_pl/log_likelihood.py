"""Log-likelihood pieces shared by SFT training and attribution.

One definition of "the log-probability of the target tokens" is used everywhere, so the SFT
loss, the measurement f and the per-example training loss L(z) cannot drift apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from infra_pl.data.chat_encoding import IGNORE_INDEX


def target_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log p(label_t | tokens_<t), shifted; returns ``(log_probs, mask)`` of shape [B, T-1].

    Logits are upcast to float32 before the softmax: bf16 log-softmax over a large vocabulary
    loses enough precision to change influence rankings. The softmax runs over all T positions
    and only the small [B, T] result is cut to T-1 (see :func:`next_token_targets`): under the
    forward-mode token pass that also spares copying the tangent logits.
    """
    targets = next_token_targets(labels)
    mask = targets.ne(IGNORE_INDEX)
    safe_targets = targets.masked_fill(~mask, 0)
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    return (log_probs * mask)[:, :-1], mask[:, :-1]


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted so position t holds the token that position t's logits predict: [B, T].

    The last position predicts nothing (-100). Shifting the *labels* instead of slicing the
    logits (``logits[:, :-1]``) matters for speed and memory: the slice of a [B, T, vocab] tensor
    is copied before the softmax, and its backward allocates and zero-fills a full-size gradient;
    both are as large as the logits, the biggest activation of a small-vocabulary pass.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def _token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position NLL of the next-token targets (0 where there is none): [B, T], float32."""
    targets = next_token_targets(labels)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return nll.view(targets.shape)


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L(z): summed NLL over the target (assistant) tokens of each sequence, shape [B].

    Equal to ``-target_log_probs(logits, labels)[0].sum(-1)`` (a test checks it), computed without
    copying the logits (see :func:`next_token_targets`).
    """
    return _token_nll(logits, labels).sum(dim=-1)


def mean_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SFT loss: NLL summed over all target tokens of the batch, divided by their count.

    Returns ``(loss, n_tokens)``. Dividing by the batch's token count (not averaging per-sequence
    means) weights every target token equally, as Hugging Face's causal-LM loss does.
    """
    nll = _token_nll(logits, labels)
    n_tokens = labels[:, 1:].ne(IGNORE_INDEX).sum()
    return nll.sum() / n_tokens.clamp(min=1), n_tokens
