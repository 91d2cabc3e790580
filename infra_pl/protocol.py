"""What the attribution callbacks need from a LightningModule and a DataModule.

The EK-FAC and influence maths (``infra_pl.ekfac``, ``infra_pl.influence``) take a network, a
loss callable ``loss_fn(model, batch, sample_labels) -> Tensor[B]`` and (for token scores) a
logits callable. These protocols are the Lightning-side contract from which the callbacks build
those callables, so any LightningModule / DataModule that implements them gets factors and
scores, not only :class:`~infra_pl.module.SFTModule` and
:class:`~infra_pl.data.datamodule.ReasoningDataModule`.

Model side (:class:`AttributableModule`), per product:

======================================  =========================================================
method                                  needed for
======================================  =========================================================
``attribution_model() -> nn.Module``    everything: the network whose layers are hooked
``per_example_loss(batch) -> [B]``      everything: L(z), summed NLL over each sequence's targets
``sampled_per_example_loss(batch)``     ``EKFACFactors(fisher="true")`` (the default), unless
                                        ``attribution_logits`` exists (then derived from it)
``attribution_logits(batch) -> [B,T,V]`` token scores (``token_top_k > 0``/``token_all``) and
                                        sentence scores
======================================  =========================================================

Data side (:class:`AttributionData`):

========================================================  ========================================
method                                                    needed for
========================================================  ========================================
``attribution_ids(split) -> Sequence[str]``               everything (``split="train"``); the
                                                          default measurement also uses ``"eval"``
``attribution_dataloader(split, batch_size, indices)``    everything: unshuffled batches, each a
                                                          dict with ``"index"`` (positions in
                                                          ``attribution_ids(split)``)
``attribution_metadata(split) -> Sequence[Mapping]``      optional: extra instance-table columns
                                                          (the report groups by ``domain`` etc.)
``attribution_example(split, index) -> Mapping``          sentence scores (``messages``), with
                                                          ``tokenizer`` and ``max_length``
========================================================  ========================================

Why ``attribution_model()`` is separate from the LightningModule: the hooks must sit on the
layers that the loss methods actually run (an HF model inside the module, a PEFT wrapper, ...),
and fingerprints/factors are keyed by that network's module names.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from infra_pl.ekfac.loss import LossFn, sample_target_labels
from infra_pl.influence.tokens import LogitsFn
from infra_pl.log_likelihood import per_example_nll

Batch = Mapping[str, Any]


class ProtocolError(TypeError):
    """A module or datamodule lacks a method an attribution product needs; the message names it."""


@runtime_checkable
class AttributableModule(Protocol):
    """The LightningModule methods the attribution callbacks call (required part).

    ``per_example_loss`` must run its forward pass through ``attribution_model()`` (the tracked
    layers are hooked there) and return L(z) = −Σ_t log p(z_t | z_<t) over the sequence's
    target tokens, differentiable, shape [B]. Summing (not averaging) makes ∇L a gradient of
    log p(z), which is what the scores' units and signs assume.
    """

    def attribution_model(self) -> nn.Module: ...

    def per_example_loss(self, batch: Batch) -> torch.Tensor: ...


@runtime_checkable
class SamplesFisherLabels(Protocol):
    """Optional: L(z) with each target token replaced by a draw from the model's prediction.

    Needed for the true Fisher (``EKFACFactors(fisher="true")``). Draw with the global torch RNG
    (the callback seeds it so both factor passes see the same labels); shape [B].
    """

    def sampled_per_example_loss(self, batch: Batch) -> torch.Tensor: ...


@runtime_checkable
class TokenAttributable(Protocol):
    """Optional: next-token logits [B, T, V] aligned with ``batch["input_ids"]``.

    Targets are ``batch["labels"][:, 1:]`` (``-100`` = not a target), the layout of Hugging Face
    causal LMs; the per-token log-probabilities log p(z_t | z_<t) of token scores (Eq. 9) are
    ``infra_pl.log_likelihood.target_log_probs(logits, labels)``. They must sum to −``per_example_loss``
    for token scores to sum to the instance score (checked and printed on every run).
    """

    def attribution_logits(self, batch: Batch) -> torch.Tensor: ...


@runtime_checkable
class AttributionData(Protocol):
    """The DataModule methods the attribution passes call (required part).

    ``attribution_ids(split)`` lists stable example ids; position i is the ``index`` carried in
    every batch of ``attribution_dataloader(split, ...)``. The loader is unshuffled (Lightning
    adds a distributed sampler under DDP) and yields dict batches holding ``"index"`` (a long
    tensor [B]) plus whatever the module's loss methods read; ``indices`` restricts it to those
    positions (resumed passes, top-K examples, measurement items).
    """

    def attribution_ids(self, split: str) -> Sequence[str]: ...

    def attribution_dataloader(
        self, split: str = "train", batch_size: int | None = None, indices: list[int] | None = None
    ) -> Iterable[Batch]: ...


# ------------------------------------------------------------------ checks

MODULE_METHODS = {
    "attribution_model": "attribution_model() -> nn.Module (the network whose layers are hooked)",
    "per_example_loss": "per_example_loss(batch) -> Tensor[B] (summed NLL of each sequence's target tokens)",
    "sampled_per_example_loss": "sampled_per_example_loss(batch) -> Tensor[B] (the same loss with targets sampled "
    "from the model)",
    "attribution_logits": "attribution_logits(batch) -> Tensor[B, T, V] (next-token logits aligned with "
    "batch['input_ids']; targets in batch['labels'])",
}
DATA_METHODS = {
    "attribution_ids": "attribution_ids(split) -> Sequence[str] (ids of the examples; position = batch['index'])",
    "attribution_dataloader": "attribution_dataloader(split, batch_size=None, indices=None) -> unshuffled dict "
    "batches carrying 'index'",
    "attribution_metadata": "attribution_metadata(split) -> Sequence[Mapping] (per-example columns such as domain)",
    "attribution_example": "attribution_example(split, index) -> Mapping with chat 'messages'",
}


def _has(obj: Any, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _name(obj: Any) -> str:
    return type(obj).__name__


def require_module(pl_module: Any, methods: Sequence[str], needed_for: str, hint: str = "") -> None:
    """Raise :class:`ProtocolError` naming every method of ``methods`` that ``pl_module`` lacks."""
    missing = [m for m in methods if not _has(pl_module, m)]
    if missing:
        listed = "; ".join(MODULE_METHODS.get(m, m) for m in missing)
        raise ProtocolError(
            f"{_name(pl_module)} does not implement {', '.join(missing)}, which {needed_for} needs: {listed}. "
            f"See infra_pl.protocol.AttributableModule (README: 'Extending infra-pl').{(' ' + hint) if hint else ''}"
        )


def require_data(datamodule: Any, methods: Sequence[str], needed_for: str, hint: str = "") -> None:
    """Raise :class:`ProtocolError` naming every method of ``methods`` that ``datamodule`` lacks."""
    if datamodule is None:
        raise ProtocolError(
            f"{needed_for} needs a datamodule implementing {', '.join(methods)} "
            "(infra_pl.protocol.AttributionData); pass datamodule= to attribute()"
        )
    missing = [m for m in methods if not _has(datamodule, m)]
    if missing:
        listed = "; ".join(DATA_METHODS.get(m, m) for m in missing)
        raise ProtocolError(
            f"{_name(datamodule)} does not implement {', '.join(missing)}, which {needed_for} needs: {listed}. "
            f"See infra_pl.protocol.AttributionData (README: 'Extending infra-pl').{(' ' + hint) if hint else ''}"
        )


def require_true_fisher(pl_module: Any, needed_for: str) -> None:
    """The true Fisher needs sampled labels: ``sampled_per_example_loss`` or ``attribution_logits``."""
    if _has(pl_module, "sampled_per_example_loss") or _has(pl_module, "attribution_logits"):
        return
    raise ProtocolError(
        f"{_name(pl_module)} implements neither sampled_per_example_loss nor attribution_logits, one of which "
        f"{needed_for} with fisher='true' needs to sample labels from the model: "
        f"{MODULE_METHODS['sampled_per_example_loss']}. Implement one of them, or set fisher: empirical."
    )


# -------------------------------------------------------- adapters to the core


def attribution_model(pl_module: Any) -> nn.Module:
    """The network to hook; errors if the module does not say which one it is or has not built it."""
    require_module(pl_module, ["attribution_model"], "attribution")
    model = pl_module.attribution_model()
    if not isinstance(model, nn.Module):
        raise ProtocolError(
            f"{_name(pl_module)}.attribution_model() returned {type(model).__name__}, not an nn.Module "
            "(is the network built? Lightning builds it in configure_model)"
        )
    return model


def model_is_built(pl_module: Any) -> bool:
    """Whether ``attribution_model()`` already returns a network (False before ``configure_model``)."""
    try:
        return isinstance(pl_module.attribution_model(), nn.Module)
    except Exception:  # noqa: BLE001 - a module may fail until configure_model has run
        return False


def _sampled_from_logits(pl_module: Any, batch: Batch) -> torch.Tensor:
    logits = pl_module.attribution_logits(batch)
    labels = sample_target_labels(logits.detach(), batch["labels"])
    return per_example_nll(logits, labels)


def loss_fn_for(pl_module: Any) -> LossFn:
    """The core's ``loss_fn(model, batch, sample_labels)`` built from the module's protocol methods.

    The ``model`` argument is not used: the module's methods run their own network, which is
    the ``attribution_model()`` the core hooks. Shapes are checked, since a [B, T] or scalar loss
    would silently mean another Fisher.
    """
    require_module(pl_module, ["per_example_loss"], "attribution")
    sampled = getattr(pl_module, "sampled_per_example_loss", None)

    def loss_fn(model: nn.Module, batch: Batch, sample_labels: bool) -> torch.Tensor:
        if not sample_labels:
            losses = pl_module.per_example_loss(batch)
        elif callable(sampled):
            losses = sampled(batch)
        elif _has(pl_module, "attribution_logits"):
            losses = _sampled_from_logits(pl_module, batch)
        else:
            require_true_fisher(pl_module, "the EK-FAC factor passes")
        _check_losses(pl_module, losses, batch)
        return losses

    return loss_fn


def weighted_loss_fn(loss_fn: LossFn) -> LossFn:
    """``w_i · L_i`` when the batch carries ``"measurement_weight"`` [B]; ``L_i`` otherwise.

    Lets a measurement be any weighted sum Σ w_i log p(seq_i) (a margin has w = +1/N and −1/N)
    while the core keeps differentiating one per-sequence loss.
    """

    def weighted(model: nn.Module, batch: Batch, sample_labels: bool) -> torch.Tensor:
        losses = loss_fn(model, batch, sample_labels)
        weights = batch.get("measurement_weight")
        if weights is None:
            return losses
        return losses * weights.to(device=losses.device, dtype=losses.dtype)

    return weighted


def logits_fn_for(pl_module: Any) -> LogitsFn:
    """The token-score core's ``logits_fn(model, batch)`` from ``attribution_logits``."""
    require_module(pl_module, ["attribution_logits"], "token scores", "Or set token_top_k: 0 on InfluenceScores.")

    def logits_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = pl_module.attribution_logits(batch)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(batch["input_ids"].shape):
            raise ProtocolError(
                f"{_name(pl_module)}.attribution_logits returned shape {tuple(logits.shape)}; expected "
                f"[B, T, V] with [B, T] = {tuple(batch['input_ids'].shape)} (batch['input_ids'])"
            )
        return logits

    return logits_fn


def _check_losses(pl_module: Any, losses: Any, batch: Batch) -> None:
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ProtocolError(
            f"{_name(pl_module)}.per_example_loss must return one summed loss per sequence, shape [B]; got {shape}"
        )
    index = batch.get("index")
    if isinstance(index, torch.Tensor) and losses.shape[0] != index.shape[0]:
        raise ProtocolError(
            f"{_name(pl_module)}.per_example_loss returned {losses.shape[0]} losses for a batch of {index.shape[0]}"
        )


def batch_indices(batch: Batch, where: str) -> list[int]:
    """The ``index`` of a batch as ints, with an error naming the missing key."""
    index = batch.get("index") if isinstance(batch, Mapping) else None
    if index is None:
        raise ProtocolError(
            f"{where}: batches must be dicts carrying 'index' (positions in attribution_ids(split)); "
            f"got {type(batch).__name__} with keys {sorted(batch) if isinstance(batch, Mapping) else '-'}"
        )
    return [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
