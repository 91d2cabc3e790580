"""Which layers EK-FAC tracks, and how their weights map to one [out, in(+1)] matrix.

Every layer kind is reduced to the same picture: a weight matrix W of shape [out, in] (plus an
optional bias, handled as an extra input column of ones), applied to the last dimension of the
layer's input. Everything downstream (covariances, eigenbases, gradients, preconditioning) works
on that one layout, so GPT-2's ``Conv1D`` (weight stored [in, out]) and ``nn.Linear`` share code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

try:  # transformers is a project dependency, but the EK-FAC core must not need it to import.
    from transformers.pytorch_utils import Conv1D as _HFConv1D
except Exception:  # pragma: no cover - exercised only without transformers
    _HFConv1D = None

SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,) + ((_HFConv1D,) if _HFConv1D is not None else ())

# A block's MLP: "model.layers.3.mlp.up_proj", "transformer.h.0.mlp.c_fc", or a top-level "mlp.fc".
_MLP_PATTERN = re.compile(r"(^|\.)mlp\.")
# peft keeps one adapter per name in a ModuleDict: "...mlp.up_proj.lora_A.default".
_LORA_PATTERN = re.compile(r"\.lora_[AB]\.[^.]+$")


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (a linear layer whose weight is stored transposed)."""
    return _HFConv1D is not None and isinstance(module, _HFConv1D)


@dataclass(frozen=True)
class LayerShape:
    """Shape of a tracked layer in the canonical layout: gradient matrices are [out, in + has_bias]."""

    out_features: int
    in_features: int
    has_bias: bool

    @property
    def in_dim(self) -> int:
        """Width of the activation vector after the constant-1 bias column is appended."""
        return self.in_features + int(self.has_bias)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_dim)

    def to_dict(self) -> dict[str, int | bool]:
        return {"out_features": self.out_features, "in_features": self.in_features, "has_bias": self.has_bias}


def layer_shape(module: nn.Module) -> LayerShape:
    """Canonical shape of a supported layer (raises ``TypeError`` for anything else)."""
    if isinstance(module, nn.Linear):
        return LayerShape(module.out_features, module.in_features, module.bias is not None)
    if is_conv1d(module):
        in_features, out_features = module.weight.shape
        return LayerShape(int(out_features), int(in_features), module.bias is not None)
    raise TypeError(f"unsupported layer type {type(module).__name__}; EK-FAC tracks nn.Linear and HF Conv1D")


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's parameters as one [out, in(+1)] matrix (bias as the last column), detached."""
    weight = module.weight.detach()
    if is_conv1d(module):
        weight = weight.t()
    if getattr(module, "bias", None) is not None:
        weight = torch.cat([weight, module.bias.detach().unsqueeze(1)], dim=1)
    return weight


def split_weight_bias(module: nn.Module, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Map an [out, in(+1)] matrix back to tensors shaped like ``module.weight`` and ``module.bias``.

    Downstream code uses this to turn a preconditioned gradient into a parameter-space direction
    (e.g. the tangent of a JVP), so the Conv1D transpose lives in exactly one place.
    """
    shape = layer_shape(module)
    if tuple(matrix.shape[-2:]) != shape.matrix_shape:
        raise ValueError(f"expected a matrix of shape {shape.matrix_shape}, got {tuple(matrix.shape)}")
    weight = matrix[..., : shape.in_features]
    bias = matrix[..., shape.in_features] if shape.has_bias else None
    if is_conv1d(module):
        weight = weight.transpose(-1, -2)
    return weight, bias


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {name: mod for name, mod in model.named_modules() if isinstance(mod, SUPPORTED_TYPES)}


def _is_lora_model(candidates: Mapping[str, nn.Module]) -> bool:
    return any(_LORA_PATTERN.search(name) for name in candidates)


def find_tracked_modules(model: nn.Module, include: str | Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Layers whose weights EK-FAC models, keyed by their ``named_modules`` name (model order).

    Default: the MLP projections of each block (``nn.Linear``/HF ``Conv1D`` under a path with an
    ``mlp`` component), because the paper attributes through the MLPs and attention weights add
    cost without changing rankings much. For a peft LoRA model only the adapter layers
    (``lora_A.<adapter>``, ``lora_B.<adapter>``) inside MLPs are tracked: they are the only
    weights that were trained, so they are the only ones an influence function can move.

    ``include`` overrides the rule: a regex string is ``re.search``-ed against every supported
    layer's name; a list names layers exactly (each must exist and be a supported type).
    """
    candidates = _candidates(model)
    if isinstance(include, str):
        pattern = re.compile(include)
        tracked = {n: m for n, m in candidates.items() if pattern.search(n)}
        rule = f"regex {include!r}"
    elif include is not None:
        all_modules = dict(model.named_modules())
        missing = [n for n in include if n not in all_modules]
        unsupported = [n for n in include if n in all_modules and n not in candidates]
        if missing or unsupported:
            raise ValueError(
                f"cannot track {missing + unsupported}: "
                + (f"not found in the model {missing}; " if missing else "")
                + (f"not nn.Linear/Conv1D {unsupported}; " if unsupported else "")
                + f"candidates include {_preview(candidates)}"
            )
        tracked = {n: candidates[n] for n in candidates if n in set(include)}
        rule = f"list of {len(include)} names"
    elif _is_lora_model(candidates):
        tracked = {n: m for n, m in candidates.items() if _MLP_PATTERN.search(n) and _LORA_PATTERN.search(n)}
        rule = "LoRA adapter layers inside MLP modules"
    else:
        tracked = {n: m for n, m in candidates.items() if _MLP_PATTERN.search(n)}
        rule = "nn.Linear/Conv1D layers inside MLP modules"
    if not tracked:
        raise ValueError(
            f"no module matched ({rule}); pass include= a regex or a list of names. "
            f"Candidate nn.Linear/Conv1D layers: {_preview(candidates)}"
        )
    return tracked


def _preview(candidates: Mapping[str, nn.Module], limit: int = 12) -> str:
    names = list(candidates)
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)" if names else "[] (none)"


def resolve_modules(
    model: nn.Module, modules: Mapping[str, nn.Module] | str | Sequence[str] | None
) -> dict[str, nn.Module]:
    """Accept a ready mapping, a regex, a list of names or None (default rule) and return a mapping."""
    if isinstance(modules, Mapping):
        for name, module in modules.items():
            layer_shape(module)  # fail early on unsupported types
        return dict(modules)
    return find_tracked_modules(model, modules)
