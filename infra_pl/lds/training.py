"""Deterministic (re)training and the measurements taken on every retrained model.

Why a plain loop instead of a Lightning ``Trainer``: an LDS run trains dozens of models, and each
must be a pure function of (initial weights, example subset, seed). The loop below is the SFT
recipe of ``SFTModule`` -- the same token-mean NLL (:func:`infra_pl.log_likelihood.mean_token_nll`),
AdamW with the same parameter groups, linear warmup + cosine (:func:`infra_pl.schedule.warmup_cosine`),
gradient clipping, and the same length-grouped batches as ``fit`` -- with a fixed number of steps
and no wall-clock budget, logging or checkpoint I/O, so nothing but the data and the seed varies.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from infra_pl.data.batching import LengthGroupedBatchSampler
from infra_pl.data.chat_encoding import collate_padded
from infra_pl.ekfac.loss import causal_lm_loss
from infra_pl.ekfac.passes import eval_mode
from infra_pl.lds.config import LDSSetting, TrainRecipe
from infra_pl.log_likelihood import mean_token_nll
from infra_pl.model_builder import build_causal_lm
from infra_pl.schedule import warmup_cosine


def build_model(setting: LDSSetting, tokenizer: Any) -> nn.Module:
    """The setting's model with its seeded random initialisation (before any training)."""
    return build_causal_lm(
        name_or_path=None,
        model_config=setting.model_config,
        vocab_size=len(tokenizer),
        special_token_ids={
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        dtype="float32",
        attn_implementation="sdpa",
        init_seed=setting.init_seed,
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on biases and norms, as ``SFTModule.configure_optimizers`` does."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batch_indices(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless length-grouped batches; each pass over the data is the sampler's next epoch."""
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed)
    while True:
        yield from sampler


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def train(
    model: nn.Module,
    features: Sequence[Mapping[str, Any]],
    recipe: TrainRecipe,
    seed: int,
    pad_token_id: int,
) -> list[float]:
    """Train ``model`` in place for ``recipe.steps`` steps on ``features``; returns the step losses.

    Deterministic: the batch order comes from ``seed`` alone (for a given list of features), and
    any randomness inside the model (dropout, if configured) draws from a torch RNG seeded with it.
    """
    if not features:
        raise ValueError("cannot train on an empty set of examples")
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.learning_rate, betas=recipe.betas)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    batches = _batch_indices([len(f["input_ids"]) for f in features], recipe.batch_size, seed)
    losses: list[float] = []
    model.train()
    with _seeded(seed):
        for step in range(recipe.steps):
            lr = recipe.learning_rate * warmup_cosine(step / recipe.steps, recipe.warmup_fraction, recipe.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = collate_padded([features[i] for i in next(batches)], pad_token_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            loss, _ = mean_token_nll(logits, batch["labels"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower the learning rate")
            loss.backward()
            if recipe.gradient_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, recipe.gradient_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def item_log_likelihoods(model: nn.Module, batches: Any) -> np.ndarray:
    """log p(y | x) summed over each item's target tokens, in batch order (float64 array)."""
    values: list[np.ndarray] = []
    with eval_mode(model):
        for batch in batches:
            values.append(-causal_lm_loss(model, batch, False).double().cpu().numpy())
    return np.concatenate(values) if values else np.zeros(0)
