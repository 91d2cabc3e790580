"""The per-sequence training loss L(z) that the Fisher (and the training gradients) are built from.

A loss callable maps ``(model, batch, sample_labels)`` to a [B] tensor of summed token NLLs. With
``sample_labels=True`` the target tokens are drawn from the model's own predictive distribution,
which turns the gradient outer products into an unbiased estimate of the *true* Fisher (the
Gauss-Newton matrix for softmax outputs); with the data labels it is the *empirical* Fisher.
Summing (not averaging) over tokens matters: it makes L(z) the log-likelihood of the whole
sequence, so a gradient of L is a gradient of log p(z) up to sign.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

from infra_pl.data.chat_encoding import IGNORE_INDEX
from infra_pl.log_likelihood import per_example_nll


class LossFn(Protocol):
    """``loss_fn(model, batch, sample_labels) -> Tensor[B]``: summed NLL of each sequence's targets."""

    def __call__(self, model: nn.Module, batch: Mapping[str, Any], sample_labels: bool) -> torch.Tensor: ...


_LABEL_RNG = threading.local()


@contextlib.contextmanager
def label_seeds(seeds: Sequence[int] | None) -> Iterator[None]:
    """In this thread, sample each sequence's labels from its own generator, seeded with ``seeds[b]``.

    ``None`` keeps the global RNG. Why: with one seed per *sequence*, drawn in data order by the
    caller, a sequence's sampled labels depend only on its position in the data, not on how the
    data is batched, split over streams (:mod:`infra_pl.ekfac.streams`) or timed across threads;
    a true-Fisher fit with 2 streams then equals the 1-stream fit up to summation order.
    """
    if seeds is None:
        yield
        return
    previous = getattr(_LABEL_RNG, "seeds", None)
    _LABEL_RNG.seeds = [int(seed) for seed in seeds]
    try:
        yield
    finally:
        _LABEL_RNG.seeds = previous


@torch.no_grad()
def sample_target_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Replace every target token (label != -100) with a draw from the model's prediction for it.

    ``labels`` are aligned with the inputs, so the label at position t+1 is predicted by the
    logits at position t; non-target positions keep -100. Uses the global torch RNG, so callers
    control reproducibility with ``torch.manual_seed``/``fork_rng``, unless :func:`label_seeds`
    gave this thread one seed per sequence.
    """
    targets = labels[:, 1:]
    mask = targets.ne(IGNORE_INDEX)
    sampled = labels.clone()
    seeds = getattr(_LABEL_RNG, "seeds", None)
    if seeds is None:
        if mask.any():
            probs = torch.softmax(logits[:, :-1, :][mask].float(), dim=-1)
            sampled[:, 1:][mask] = torch.multinomial(probs, num_samples=1).squeeze(-1).to(labels.dtype)
        return sampled
    if len(seeds) != labels.shape[0]:
        raise ValueError(f"label_seeds got {len(seeds)} seeds for a batch of {labels.shape[0]} sequences")
    for row, seed in enumerate(seeds):
        row_mask = mask[row]
        if row_mask.any():
            probs = torch.softmax(logits[row, :-1, :][row_mask].float(), dim=-1)
            generator = torch.Generator(device=probs.device).manual_seed(seed)
            draws = torch.multinomial(probs, num_samples=1, generator=generator)
            sampled[row, 1:][row_mask] = draws.squeeze(-1).to(labels.dtype)
    return sampled


def causal_lm_logits(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Logits of a Hugging Face causal LM, without building a KV cache (nothing reuses it)."""
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kwargs["use_cache"] = False
    outputs = model(**kwargs)
    return outputs.logits if hasattr(outputs, "logits") else outputs[0]


def causal_lm_loss(model: nn.Module, batch: Mapping[str, Any], sample_labels: bool) -> torch.Tensor:
    """Default loss for Hugging Face causal LMs: summed target-token NLL per sequence, shape [B].

    Logits are upcast to float32 inside :func:`infra_pl.log_likelihood.per_example_nll` (the same
    definition SFT and the measurement use), so a bf16 model does not lose precision in the
    log-softmax.
    """
    logits = causal_lm_logits(model, batch)
    labels = batch["labels"]
    if sample_labels:
        labels = sample_target_labels(logits.detach(), labels)
    return per_example_nll(logits, labels)
