"""Cheap, deterministic fingerprints of model weights and training-set ids.

Factors are only valid for the weights and data they were fitted on; a stale ``factors/``
directory after re-training silently gives wrong scores. Hashing every weight would cost a pass
over the model, so each parameter contributes its shape and a fixed, evenly strided sample of its
values. The sample is picked with integer index arithmetic and hashed as float32 bytes, with no
floating-point reductions, so the same weights give the same hash on CPU and GPU and in any
dtype that represents them exactly. Any fine-tuning step changes essentially every weight, so a
sample is enough to notice it.

Under FSDP each rank holds a shard of the weights (flattened views, empty where the rank holds
none): a fingerprint of those would differ between ranks and from a single process's. Fingerprints
are taken of full weights only, gathered on every rank (:func:`infra_pl.fsdp.full_weights`;
``attribute`` gathers them for its whole run); a sharded view raises :class:`ShardedWeightsError`.
Parameter names are hashed without torch's wrapper segments (``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.``, ``_orig_mod.``), so a wrapped model with gathered weights hashes
like the plain one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable, Mapping

import torch
from torch import nn

TRACKED_SAMPLE = 1024  # values hashed per tracked parameter
OTHER_SAMPLE = 16  # values hashed per untracked parameter (catches a changed LoRA base model)

# Segments torch's wrappers add to parameter names: FSDP units, activation checkpointing, torch.compile.
_WRAPPER_SEGMENT = re.compile(r"(^|\.)(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)(?=\.|$)")


class ShardedWeightsError(RuntimeError):
    """A fingerprint was asked of FSDP-sharded weights (it would be rank-specific)."""


def canonical_name(name: str) -> str:
    """``name`` without the segments torch's wrappers add (FSDP, activation checkpointing, compile)."""
    return _WRAPPER_SEGMENT.sub("", name).lstrip(".")


def _matrix_weights(module: nn.Module) -> list[torch.Tensor]:
    """The parameters of ``module`` that are matrices whenever they are whole (Linear, Conv1D, Embedding)."""
    if isinstance(module, (nn.Linear, nn.Embedding)) or type(module).__name__ == "Conv1D":
        weight = module._parameters.get("weight")
        return [weight] if weight is not None else []
    return []


def require_full_weights(modules: Iterable[tuple[str, nn.Module]]) -> None:
    """Raise :class:`ShardedWeightsError` when a matrix weight below ``modules`` is an FSDP shard.

    FSDP (``use_orig_params=True``) leaves each parameter a flattened 1-D view of this rank's shard
    (size 0 where the rank holds none of it) outside its forward; a whole ``nn.Linear``,
    ``Conv1D`` or ``nn.Embedding`` weight is 2-D, which tells the two apart exactly.
    """
    for name, module in modules:
        for weight in _matrix_weights(module):
            if weight.dim() != 2:
                raise ShardedWeightsError(
                    f"the weight of {canonical_name(name) or type(module).__name__} has shape {tuple(weight.shape)}: "
                    "an FSDP shard. Weight fingerprints need the full weights on every rank (they would differ "
                    "between ranks and from one process's): compute them inside infra_pl.fsdp.full_weights(strategy)"
                )


def _strided_sample(tensor: torch.Tensor, count: int) -> bytes:
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return b""
    k = min(n, count)
    index = (torch.arange(k, dtype=torch.int64) * (n - 1)) // max(k - 1, 1)
    values = flat[index.to(flat.device)].to(device="cpu", dtype=torch.float32)
    return values.numpy().tobytes()


def _hash_parameters(named: Iterable[tuple[str, torch.Tensor]], count: int) -> str:
    digest = hashlib.sha256()
    for name, param in named:
        digest.update(f"{canonical_name(name)}:{tuple(param.shape)};".encode())
        digest.update(_strided_sample(param, count))
    return digest.hexdigest()


def module_fingerprints(modules: Mapping[str, nn.Module]) -> dict[str, str]:
    """One sha256 per tracked module over its parameters' shapes and sampled values."""
    require_full_weights(modules.items())
    return {
        name: _hash_parameters(sorted(module.named_parameters(recurse=False)), TRACKED_SAMPLE)
        for name, module in modules.items()
    }


def untracked_fingerprint(model: nn.Module, modules: Mapping[str, nn.Module]) -> str:
    """sha256 over every parameter of the model outside the tracked modules (small samples)."""
    require_full_weights(model.named_modules())
    tracked_ids = {id(p) for m in modules.values() for p in m.parameters(recurse=False)}
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in tracked_ids]
    return _hash_parameters(named, OTHER_SAMPLE)


def model_fingerprint(model: nn.Module, modules: Mapping[str, nn.Module]) -> str:
    """Single sha256 combining the per-module and untracked fingerprints (for the manifest)."""
    digest = hashlib.sha256()
    for name, value in sorted(module_fingerprints(modules).items()):
        digest.update(f"{name}={value};".encode())
    digest.update(f"untracked={untracked_fingerprint(model, modules)}".encode())
    return digest.hexdigest()


WEIGHTS_SAMPLE = 64  # values hashed per parameter for the whole-model fingerprint


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter of ``model`` (shapes and sampled values), independent of tracking.

    Written into ``correctness.jsonl`` by ``validate`` so ``attribute`` can check that D_correct was
    decided by the same weights it attributes (a stale correctness file silently measures the
    wrong items otherwise).
    """
    require_full_weights(model.named_modules())
    named = sorted((canonical_name(n), p) for n, p in model.named_parameters())
    return _hash_parameters(named, WEIGHTS_SAMPLE)[:24]


def data_fingerprint(ids: Iterable[object]) -> str:
    """sha256 of the sorted training-example ids (order-independent, as the Fisher is)."""
    digest = hashlib.sha256()
    for value in sorted(str(i) for i in ids):
        digest.update(value.encode())
        digest.update(b"\n")
    return digest.hexdigest()
