"""Are the per-example gradients right? Batched, padded gradients against one-by-one float32 ones.

A recurring complaint about attribution libraries is that they silently give wrong per-example
gradients: a fused attention kernel that mishandles padding, a bfloat16 model whose rounding swamps
the differences between examples. Every attribution pass here computes each sequence's gradient of
the tracked layers from a *padded batch* in the model's own dtype and attention implementation
(:mod:`infra_pl.ekfac.capture`), so that is what is checked: for a few training sequences of
different lengths, :func:`check_gradients` computes

* the gradients as the passes do (one padded batch, the model as configured), and
* each sequence's gradient *alone* (no padding), with the network in float32 and eager attention,

and reports the largest relative error ‖G_batched − G_alone‖ / ‖G_alone‖ of every tracked module.
Above :data:`WARN` (float32 models; :data:`WARN_REDUCED` for bfloat16/float16 ones, whose own
rounding is about 2⁻⁸) it warns, above :data:`REFUSE` it refuses, naming the likely cause
(attention implementation, dtype) and the fix. ``infra-pl attribute`` runs it on 4 sequences
before its first pass (``--gradient_check false`` skips it); ``infra-pl check`` prints the
per-module table.

The float32 reference casts the network in place for the few reference passes and restores every
parameter and buffer to its own dtype afterwards (exact: bfloat16 and float16 values are float32
values), so a bfloat16 model briefly needs its float32 size on top.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.gradients import sequence_gradients
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import resolve_modules
from infra_pl.ekfac.passes import capture_pass, eval_mode
from infra_pl.ekfac.precision import dtype_name

WARN = 1e-3  # float32/float64 models: padding and batching change only the summation order (~1e-6)
WARN_REDUCED = 5e-2  # bfloat16/float16 models: their own rounding gives ~1e-2 against float32
REFUSE = 5e-2
REFUSE_REDUCED = 0.25
SEQUENCES = 4


class GradientCheckError(ValueError):
    """The batched per-example gradients differ from the one-by-one float32 ones beyond the bound."""


@dataclasses.dataclass
class GradientCheckResult:
    """Largest relative error per tracked module, and the verdict with its explanation."""

    errors: dict[str, float]
    lengths: list[int]
    dtype: str
    attn_implementation: str | None
    device: str
    warn: float
    refuse: float

    @property
    def worst(self) -> tuple[str, float]:
        name = max(self.errors, key=lambda k: self.errors[k])
        return name, self.errors[name]

    @property
    def status(self) -> str:
        error = self.worst[1]
        if not error <= self.refuse:  # NaN refuses too
            return "refuse"
        return "warn" if error > self.warn else "ok"

    def summary(self) -> str:
        name, error = self.worst
        lengths = ", ".join(str(n) for n in self.lengths)
        return (f"gradient check: {len(self.lengths)} training sequences (lengths {lengths}), {len(self.errors)} tracked "
                f"modules, {self.dtype} model with {self.attn_implementation or 'its own'} attention on {self.device}: "
                f"largest relative error of the padded, batched per-example gradients against unpadded one-by-one "
                f"float32 ones {error:.2e} ({name}); warn above {self.warn:g}, refuse above {self.refuse:g}")

    def advice(self) -> str:
        causes = []
        if self.attn_implementation not in (None, "eager"):
            causes.append(f"the attention implementation ({self.attn_implementation}) may mishandle padded positions: "
                          "set model.attn_implementation: eager")
        if self.dtype not in ("float32", "float64"):
            causes.append(f"the model runs in {self.dtype}, whose rounding swamps per-example differences: set "
                          "model.dtype: float32")
        if not causes:
            causes.append("the model's output depends on padding or on the other sequences of the batch (a custom "
                          "attention or normalisation over the batch?): check how it uses attention_mask")
        return "Likely cause: " + "; or ".join(causes) + "."

    def table(self) -> str:
        width = max(len(name) for name in self.errors)
        rows = [f"  {name:<{width}}  {error:.2e}" for name, error in self.errors.items()]
        return "\n".join([f"  {'module':<{width}}  max rel. error", *rows])


def _unpadded(batch: Mapping[str, Any], row: int) -> dict[str, Any]:
    """Sequence ``row`` of a padded batch alone: its real tokens only (left or right padding)."""
    mask = batch.get("attention_mask")
    size, tokens = batch["input_ids"].shape[:2]
    keep = mask[row].bool() if mask is not None else torch.ones(tokens, dtype=torch.bool, device=batch["input_ids"].device)
    single: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == size:
            value = value[row : row + 1]
            if value.dim() >= 2 and value.shape[1] == tokens:
                value = value[:, keep]
        single[key] = value
    return single


def _gradients(model: nn.Module, batch: Mapping[str, Any], loss_fn: LossFn, tracked: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Per-sequence gradients [B, out, in(+1)] of the tracked modules, captured as the passes do (float32)."""
    grads: dict[str, torch.Tensor] = {}

    def keep(name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
        grads[name] = sequence_gradients(activations, output_grads).detach()

    capture = Capture(tracked, on_pair=keep, dtype=torch.float32)
    with capture:
        capture_pass(model, batch, loss_fn, capture, sample_labels=False)
    return grads


def _attention_configs(model: nn.Module) -> list[Any]:
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and id(config) not in seen:
            seen[id(config)] = config
    return list(seen.values())


def attention_implementation(model: nn.Module) -> str | None:
    """The Hugging Face attention implementation of ``model`` (``None`` for other networks)."""
    configs = _attention_configs(model)
    return getattr(configs[0], "_attn_implementation", None) if configs else None


@contextlib.contextmanager
def float32_eager(model: nn.Module) -> Iterator[None]:
    """The network in float32 with eager attention, in place; every tensor's dtype is restored after."""
    params = [(p, p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32]
    buffers = [(module, name, buf.dtype) for module in model.modules() for name, buf in module._buffers.items()
               if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32]
    configs = [(c, c._attn_implementation) for c in _attention_configs(model) if c._attn_implementation != "eager"]
    try:
        for param, _ in params:
            param.data = param.data.float()
        for module, name, _ in buffers:
            module._buffers[name] = module._buffers[name].float()
        for config, _ in configs:
            config._attn_implementation = "eager"
        yield
    finally:
        for param, dtype in params:
            param.data = param.data.to(dtype)
        for module, name, dtype in buffers:
            module._buffers[name] = module._buffers[name].to(dtype)
        for config, implementation in configs:
            config._attn_implementation = implementation


def _model_dtype(model: nn.Module) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def check_gradients(
    model: nn.Module,
    batch: Mapping[str, Any],
    loss_fn: LossFn = causal_lm_loss,
    modules: Mapping[str, nn.Module] | str | Sequence[str] | None = None,
    warn: float | None = None,
    refuse: float | None = None,
) -> GradientCheckResult:
    """Compare the padded, batched per-example gradients of ``batch`` with unpadded one-by-one float32 ones.

    ``batch`` is one padded batch as the attribution passes see it (``input_ids``,
    ``attention_mask``, ``labels``); ``loss_fn`` the passes' per-sequence loss; ``modules`` the
    tracked modules (default: as the factor fit picks them). Thresholds default to
    :data:`WARN`/:data:`REFUSE` for float32 models and :data:`WARN_REDUCED`/:data:`REFUSE_REDUCED`
    for bfloat16/float16 ones. Sequences without a target token are left out. Nothing is raised
    or printed: see :func:`enforce`.
    """
    tracked = resolve_modules(model, modules)
    dtype = _model_dtype(model)
    reduced = torch.finfo(dtype).bits < 32
    warn = warn if warn is not None else (WARN_REDUCED if reduced else WARN)
    refuse = refuse if refuse is not None else (REFUSE_REDUCED if reduced else REFUSE)
    implementation = attention_implementation(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    mask = batch.get("attention_mask")
    lengths = [int(n) for n in (mask.sum(-1) if mask is not None else [batch["input_ids"].shape[1]] * batch["input_ids"].shape[0])]
    targets = (batch["labels"][:, 1:] != -100).sum(-1) if "labels" in batch else None
    rows = [i for i in range(len(lengths)) if targets is None or int(targets[i]) > 0]
    if not rows:
        raise ValueError("gradient check: none of the sequences has a target token")
    with eval_mode(model):
        batched = _gradients(model, batch, loss_fn, tracked)
        with float32_eager(model), torch.autocast(device.type, enabled=False):
            alone = [_gradients(model, _unpadded(batch, i), loss_fn, tracked) for i in rows]
    errors = {}
    for name in tracked:
        worst = 0.0
        for k, i in enumerate(rows):
            reference = alone[k][name][0].double()
            difference = (batched[name][i].double() - reference).norm()
            scale = reference.norm()
            error = float(difference / scale) if scale > 0 else (0.0 if difference == 0 else float("inf"))
            worst = error if error != error else max(worst, error)  # NaN wins
            if worst != worst:
                break
        errors[name] = worst
    return GradientCheckResult(errors=errors, lengths=[lengths[i] for i in rows], dtype=dtype_name(dtype),
                               attn_implementation=implementation, device=str(device), warn=warn, refuse=refuse)


def enforce(result: GradientCheckResult, *, stream: Any = None) -> GradientCheckResult:
    """Print the result's one-line summary; warn above the warn bound, raise above the refuse bound."""
    stream = stream if stream is not None else sys.stderr
    status = result.status
    if status == "refuse":
        raise GradientCheckError(
            f"{result.summary()}. The per-example gradients attribution would use are wrong. {result.advice()} "
            "(--gradient_check false skips this check; `infra-pl check` prints every module's error)"
        )
    if status == "warn":
        print(f"[infra-pl] warning: {result.summary()}. {result.advice()}", file=stream, flush=True)
    else:
        print(f"[infra-pl] {result.summary()}: ok", file=stream, flush=True)
    return result


def spread_indices(count: int, k: int = SEQUENCES) -> list[int]:
    """``k`` indices spread over ``range(count)`` (the first and the last included)."""
    if count <= k:
        return list(range(count))
    return sorted({round(i * (count - 1) / (k - 1)) for i in range(k)})
