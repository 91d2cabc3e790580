"""The model the planner reasons about: built from its config alone, on the ``meta`` device.

Why ``meta``: parameters then have shapes and dtypes but no storage, so the tracked modules and
every parameter count of an 8B or 14B model are exact without downloading or allocating a byte.
The same module-selection code as the EK-FAC library (:func:`infra_pl.ekfac.modules.resolve_modules`)
then names the tracked layers, so the plan covers exactly the modules a real run would track.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from infra_pl.ekfac.modules import layer_shape, resolve_modules

# Decoder blocks whose saved activations :mod:`infra_pl.planner.estimate` knows op by op:
# pre-norm RMSNorm, rotary attention through SDPA, gated (SiLU) MLP.
LLAMA_LIKE = ("llama", "qwen2", "mistral")


def load_config(source: str | Path | Mapping[str, Any]) -> Any:
    """A transformers ``PretrainedConfig`` from a config.json file, a model folder, or a dict.

    Only local files are read (nothing is downloaded): the point is to plan before fetching weights.
    """
    from transformers import AutoConfig

    if isinstance(source, Mapping):
        settings = dict(source)
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"model config {path} does not exist (give a config.json file or a model folder)")
        try:
            settings = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"model config {path} is not valid JSON: {err}") from None
    model_type = settings.pop("model_type", None)
    if model_type is None:
        raise ValueError("the model config has no 'model_type' (e.g. 'llama', 'qwen2')")
    settings = {k: v for k, v in settings.items() if k not in ("architectures", "transformers_version")}
    return AutoConfig.for_model(model_type, **settings)


def meta_model(
    config: Any,
    dtype: torch.dtype = torch.bfloat16,
    lora: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The causal LM of ``config`` with every parameter on ``meta`` (no storage), in ``dtype``.

    ``lora``: ``{"r": 16, "alpha": 32, "target_modules": [...]}`` wraps the model with peft LoRA
    adapters the way :func:`infra_pl.model_builder.apply_lora` does (peft keeps adapter weights in float32
    on a bf16 model, and so does the meta model).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if lora:
            from infra_pl.model_builder import LoraOptions, apply_lora

            model = apply_lora(model, LoraOptions(**dict(lora)))
    model.config.use_cache = False
    return model


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (tied weights counted once)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class TrackedModule:
    """One tracked layer in the EK-FAC layout: gradients are [out, in_dim] (in_dim includes a bias column)."""

    name: str
    out_features: int
    in_dim: int
    has_bias: bool
    dtype_bytes: int  # bytes per element of the layer's weight (and so of its input and output)

    @property
    def weight_elements(self) -> int:
        return self.out_features * self.in_dim


def tracked_modules(model: nn.Module, modules: str | Sequence[str] | None = None) -> list[TrackedModule]:
    """The layers EK-FAC would track on ``model`` (default rule, a regex, or a list), in model order."""
    tracked = resolve_modules(model, modules)
    out = []
    for name, module in tracked.items():
        shape = layer_shape(module)
        out.append(TrackedModule(name, shape.out_features, shape.in_dim, shape.has_bias, module.weight.element_size()))
    return out


@dataclass(frozen=True)
class Architecture:
    """The sizes of a Llama-style decoder that set its activation memory (read from the HF config)."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> "Architecture":
        model_type = getattr(config, "model_type", None)
        if model_type not in LLAMA_LIKE:
            raise ValueError(
                f"the activation model knows {', '.join(LLAMA_LIKE)} decoders (RMSNorm, rotary SDPA attention, "
                f"gated MLP); got model_type {model_type!r}"
            )
        heads = int(config.num_attention_heads)
        hidden = int(config.hidden_size)
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return cls(
            model_type=model_type,
            hidden=hidden,
            intermediate=int(config.intermediate_size),
            layers=int(config.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            vocab=int(config.vocab_size),
        )

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim
