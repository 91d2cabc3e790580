"""One forward + backward pass of the per-sequence loss through a :class:`Capture`.

Every phase (covariance, Lambda, per-example gradients) needs the same pass; only what the
capture callbacks do with the activations and gradients differs. Keeping the pass here means the
phases cannot disagree on masking, sampling or which tensors are differentiated.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Literal, Mapping

import torch
from torch import nn

from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.loss import LossFn

FisherType = Literal["true", "empirical"]


def check_fisher(fisher: str) -> FisherType:
    """Validate the Fisher type early, with the allowed values in the message."""
    if fisher not in ("true", "empirical"):
        raise ValueError(f"fisher must be 'true' (labels sampled from the model) or 'empirical', got {fisher!r}")
    return fisher  # type: ignore[return-value]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameter-less module)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def batch_to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a dict batch to ``device`` (other values pass through)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


_EVAL_LOCK = threading.Lock()
_EVAL_USERS: dict[int, tuple[int, dict[nn.Module, bool]]] = {}  # id(model) -> (nesting depth, saved flags)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with dropout off and restore each submodule's training flag afterwards.

    Attribution differentiates the deterministic model; dropout noise in the Fisher or in the
    gradients would only add variance. Nested and concurrent uses (several streams on one model,
    see :mod:`infra_pl.ekfac.streams`) share one saved copy of the flags: the first entry saves
    them, the last exit restores them, so one stream finishing never switches dropout back on
    under another that is still running.
    """
    key = id(model)
    with _EVAL_LOCK:
        depth, flags = _EVAL_USERS.get(key, (0, {}))
        if depth == 0:
            flags = {m: m.training for m in model.modules()}
            model.eval()
        _EVAL_USERS[key] = (depth + 1, flags)
    try:
        yield
    finally:
        with _EVAL_LOCK:
            depth, flags = _EVAL_USERS.pop(key)
            if depth > 1:
                _EVAL_USERS[key] = (depth - 1, flags)
            else:
                for module, flag in flags.items():
                    module.train(flag)


def capture_pass(
    model: nn.Module,
    batch: Mapping[str, Any],
    loss_fn: LossFn,
    capture: Capture,
    *,
    sample_labels: bool,
) -> torch.Tensor:
    """Forward the batch, differentiate sum_n L(z_n) w.r.t. the tracked outputs; returns L detached.

    The gradient of the *sum* of per-sequence losses is what makes each token's output gradient
    belong to exactly one sequence, so per-sequence gradients are plain sums over its tokens.
    Must be called inside ``with capture:``. The backward runs to the tracked outputs' gradient
    edges only (``torch.autograd.backward`` with ``inputs``): no weight ``.grad`` is written and,
    unlike ``torch.autograd.grad``, no output gradient is kept once its hook has run.
    """
    batch = batch_to_device(batch, model_device(model))
    capture.start_batch(batch.get("attention_mask"), batch.get("labels"))
    with torch.enable_grad():
        losses = loss_fn(model, batch, sample_labels)
        if losses.dim() != 1:
            raise ValueError(f"loss_fn must return one loss per sequence (shape [B]), got {tuple(losses.shape)}")
        outputs = capture.outputs()
        if not outputs:
            raise RuntimeError(
                "no tracked module ran in the forward pass with gradients enabled; check the module selection "
                "(reentrant activation checkpointing runs the forward without gradients: use use_reentrant=False, "
                "or infra_pl.ekfac.checkpointing.activation_checkpointing)"
            )
        torch.autograd.backward(losses.sum(), inputs=outputs)
    capture.finish_batch()
    return losses.detach()


def batch_size(batch: Mapping[str, Any]) -> int:
    """Number of sequences in a batch (first dim of ``input_ids``)."""
    return int(batch["input_ids"].shape[0])
