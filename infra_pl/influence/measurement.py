"""The measurement f (paper Eq. 6), its gradient, and the preconditioned directions v = H⁻¹∇f.

f(θ) = mean over the measurement sequences of log p(y | x; θ), where log p(y | x) is summed over
the target tokens: exactly −mean L(z) with the training loss L of :mod:`infra_pl.ekfac.loss`, so
∇f = −mean ∇L. Keeping the sign here (and only here) is what lets every score downstream be
``vᵀ∇log p(z) = −vᵀ∇L(z)`` with "positive = up-weighting z raises f".

Why one direction per measurement: every score (instance, token, sentence) is linear in
v = H⁻¹∇f, so preconditioning once per measurement and stacking the M directions per module
lets one training pass score all measurements together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from infra_pl.allocator import release_free_heap
from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.factors import Factors
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import layer_shape, resolve_modules
from infra_pl.ekfac.passes import batch_size, batch_to_device, capture_pass, eval_mode, model_device

Modules = Mapping[str, nn.Module] | str | Sequence[str] | None


@dataclass
class Directions:
    """M measurement directions v_m = H⁻¹∇f_m, stacked per tracked module.

    ``per_module[name]`` is [M, out, in(+1)] in the canonical EK-FAC layout (bias gradient as the
    last column, Conv1D transposed); row m belongs to ``names[m]``.
    """

    names: list[str]
    per_module: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        m = len(self.names)
        for name, tensor in self.per_module.items():
            if tensor.dim() != 3 or tensor.shape[0] != m:
                raise ValueError(f"direction of {name!r} has shape {tuple(tensor.shape)}; expected [{m}, out, in(+1)]")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.per_module.values())).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Directions":
        """Copy with every tensor moved (and optionally cast); names are shared."""
        return Directions(list(self.names), {n: v.to(device=device, dtype=dtype) for n, v in self.per_module.items()})

    def select(self, names: Sequence[str]) -> "Directions":
        """The directions of a subset of measurements, in the given order."""
        rows = [self.names.index(n) for n in names]
        return Directions(list(names), {n: v[rows] for n, v in self.per_module.items()})

    def restrict(self, modules: Sequence[str]) -> "Directions":
        """The same measurements on some modules only, e.g. one partition: its scores are that
        partition's additive share of the full score (every score is a sum over modules)."""
        missing = [n for n in modules if n not in self.per_module]
        if missing:
            raise KeyError(f"directions have no modules {missing}")
        return Directions(list(self.names), {n: self.per_module[n] for n in modules})

    def modules_of(self, model: nn.Module, modules: Modules = None) -> dict[str, nn.Module]:
        """The model's layers these directions act on, checked against names and shapes.

        ``modules=None`` looks the names up in the model, so a caller never has to pass the same
        module selection twice; an explicit selection must cover exactly the directions' modules.
        """
        if modules is None:
            present = dict(model.named_modules())
            missing = [n for n in self.per_module if n not in present]
            if missing:
                raise KeyError(f"directions refer to modules {missing} that the model does not have")
            tracked = {n: present[n] for n in self.per_module}
        else:
            tracked = resolve_modules(model, modules)
        if set(tracked) != set(self.per_module):
            raise ValueError(
                f"module selection {sorted(tracked)} differs from the directions' modules {sorted(self.per_module)}"
            )
        for name, module in tracked.items():
            expected = layer_shape(module).matrix_shape
            if tuple(self.per_module[name].shape[1:]) != expected:
                raise ValueError(f"direction of {name!r} is {tuple(self.per_module[name].shape[1:])}, layer is {expected}")
        return tracked


def measurement_gradient(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    modules: Modules = None,
    loss_fn: LossFn = causal_lm_loss,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """∇f for f = mean over sequences of log p(y | x): {name: [out, in(+1)]}, i.e. −mean ∇L.

    The sum over sequences is formed directly from the hooked activations and output gradients
    (Σ_b Σ_t g_t a_tᵀ), never per sequence, so memory is one matrix per module whatever the
    batch size. Runs in eval mode, enables grad itself, and leaves no parameter ``.grad``.
    """
    tracked = resolve_modules(model, modules)
    sums: dict[str, torch.Tensor] = {}

    def accumulate(name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
        # Σ_b Σ_t g_t a_tᵀ as one [out, tokens] x [tokens, in] product (einsum would copy operands).
        flat_grads, flat_acts = output_grads.reshape(-1, output_grads.shape[-1]), activations.reshape(-1, activations.shape[-1])
        if name in sums:
            sums[name].addmm_(flat_grads.t(), flat_acts)
        else:
            sums[name] = flat_grads.t() @ flat_acts

    count = 0
    capture = Capture(tracked, on_pair=accumulate, dtype=dtype)
    release_free_heap()
    with eval_mode(model), capture:
        for batch in batches:
            capture_pass(model, batch, loss_fn, capture, sample_labels=False)
            count += batch_size(batch)
    release_free_heap()
    if count == 0:
        raise ValueError("the measurement set is empty: f is a mean over no sequences")
    return {name: -sums[name] / count for name in tracked}


@torch.no_grad()
def measurement_value(model: nn.Module, batches: Iterable[Mapping[str, Any]], loss_fn: LossFn = causal_lm_loss) -> float:
    """f itself (mean summed log-likelihood of the targets), for reporting beside the scores."""
    total, count = 0.0, 0
    device = model_device(model)
    with eval_mode(model):
        for batch in batches:
            losses = loss_fn(model, batch_to_device(batch, device), False)
            total -= float(losses.double().sum())
            count += int(losses.shape[0])
    if count == 0:
        raise ValueError("the measurement set is empty: f is a mean over no sequences")
    return total / count


def measurement_directions(
    factors: Factors, grads_by_measurement: Mapping[str, Mapping[str, torch.Tensor]]
) -> Directions:
    """Precondition each measurement's ∇f (v = H⁻¹∇f) and stack them per module into [M, out, in(+1)].

    Every measurement must cover the same modules; the order of ``grads_by_measurement`` fixes
    the measurement order (``Directions.names``).
    """
    if not grads_by_measurement:
        raise ValueError("no measurement gradients given")
    names = list(grads_by_measurement)
    modules = list(grads_by_measurement[names[0]])
    for name in names[1:]:
        if set(grads_by_measurement[name]) != set(modules):
            raise ValueError(f"measurement {name!r} covers different modules than {names[0]!r}")
    preconditioned = {name: factors.precondition(grads_by_measurement[name]) for name in names}
    return Directions(names, {module: torch.stack([preconditioned[n][module] for n in names]) for module in modules})
