"""Phase 1: the K-FAC covariance factors A (activations) and S (pseudo-gradients) per layer.

The state keeps raw sums and token counts, never normalised matrices, so states computed on
different workers or ranks combine by plain addition (``merge`` here, or an all-reduce SUM over
``tensors()``) and are normalised once at the end.

Normalisation (matches kronfluence 1.0.1): A = sum_tokens a a^T / n_A and S = sum_tokens g g^T /
n_S, where a is the (padding-masked, bias-augmented) layer input, g the gradient of the *summed*
per-sequence losses w.r.t. the layer output, and n_A = n_S = the number of non-padding tokens
(``attention_mask.sum()``), prompt tokens included. In kronfluence the sums are accumulated in
``module/tracker/factor.py`` (``CovarianceTracker``), the counts come from
``module/linear.py`` (``get_flattened_activation``/``get_flattened_gradient``), and the division
happens just before the eigendecomposition in ``factor/eigen.py`` (``perform_eigendecomposition``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import LayerShape, layer_shape
from infra_pl.ekfac.passes import batch_size, capture_pass, check_fisher, eval_mode, model_device
from infra_pl.ekfac.precision import resolve_compute_dtype
from infra_pl.ekfac.streams import accumulation_pass


@dataclass
class CovarianceState:
    """Un-normalised covariance sums and counts per module (all tensors, so they all-reduce)."""

    shapes: dict[str, LayerShape]
    activation_sums: dict[str, torch.Tensor]
    gradient_sums: dict[str, torch.Tensor]
    activation_counts: dict[str, torch.Tensor]  # int64 scalars: non-padding tokens seen
    gradient_counts: dict[str, torch.Tensor]
    n_sequences: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))

    @classmethod
    def zeros(
        cls, modules: Mapping[str, nn.Module], dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> "CovarianceState":
        shapes = {name: layer_shape(m) for name, m in modules.items()}

        def counts() -> dict[str, torch.Tensor]:
            return {n: torch.zeros((), dtype=torch.int64, device=device) for n in shapes}

        return cls(
            shapes=shapes,
            activation_sums={n: torch.zeros(s.in_dim, s.in_dim, dtype=dtype, device=device) for n, s in shapes.items()},
            gradient_sums={
                n: torch.zeros(s.out_features, s.out_features, dtype=dtype, device=device) for n, s in shapes.items()
            },
            activation_counts=counts(),
            gradient_counts=counts(),
            n_sequences=torch.zeros((), dtype=torch.int64, device=device),
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the state in a fixed order: all-reduce each with SUM to combine ranks."""
        out: list[torch.Tensor] = []
        for name in self.shapes:
            out += [self.activation_sums[name], self.gradient_sums[name]]
            out += [self.activation_counts[name], self.gradient_counts[name]]
        return out + [self.n_sequences]

    def merge(self, other: "CovarianceState") -> "CovarianceState":
        """Sum of two states over the same modules (e.g. two data shards)."""
        if list(other.shapes) != list(self.shapes) or other.shapes != self.shapes:
            raise ValueError("cannot merge covariance states over different modules or shapes")
        return CovarianceState(
            shapes=dict(self.shapes),
            activation_sums={n: self.activation_sums[n] + other.activation_sums[n] for n in self.shapes},
            gradient_sums={n: self.gradient_sums[n] + other.gradient_sums[n] for n in self.shapes},
            activation_counts={n: self.activation_counts[n] + other.activation_counts[n] for n in self.shapes},
            gradient_counts={n: self.gradient_counts[n] + other.gradient_counts[n] for n in self.shapes},
            n_sequences=self.n_sequences + other.n_sequences,
        )

    def activation_covariance(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A for one module: activation sum divided by its token count (optionally upcast first)."""
        total = self.activation_sums[name].to(dtype or self.activation_sums[name].dtype)
        return total / _positive(self.activation_counts[name], name)

    def gradient_covariance(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """S for one module: pseudo-gradient sum divided by its token count (optionally upcast first)."""
        total = self.gradient_sums[name].to(dtype or self.gradient_sums[name].dtype)
        return total / _positive(self.gradient_counts[name], name)


def _positive(count: torch.Tensor, name: str) -> torch.Tensor:
    if int(count) <= 0:
        raise ValueError(f"module {name!r}: no tokens were accumulated, so its covariance is undefined")
    return count


GRAM_STRIP_MIN = 128  # below this width a single product is as fast as strips


def add_gram_upper_(target: torch.Tensor, x: torch.Tensor) -> None:
    """target += xᵀx on and above the diagonal only (x: [N, d]); the lower triangle is left stale.

    A covariance is symmetric, so half of the full product is wasted work. Row strips of width b
    cost N·b·(d − a₀) each, about N·d²/2 + N·d·b/2 in total instead of N·d²: with b = d/8 that is
    56% of the flops. Measured here (N = 2048, one thread, CPU-time minima): d = 256: 3.1 → 2.5 ms,
    d = 512: 12.1 → 8.5 ms, d = 2048: 196 → 110 ms against one ``addmm_`` (torch exposes no BLAS
    symmetric rank-k update). Restore the full matrix with :func:`symmetrize_`.

    Reduced-precision ``x`` (bfloat16 operands, :mod:`infra_pl.ekfac.precision`) takes one full
    product in its own dtype, upcast into the float32 ``target``: the bfloat16 units are fast enough
    that strips would only add overhead, and the result never accumulates in bfloat16.
    """
    dim = x.shape[1]
    if x.dtype != target.dtype:
        target.add_(x.t() @ x)
        return
    if dim < 2 * GRAM_STRIP_MIN:
        target.addmm_(x.t(), x)
        return
    width = _strip_width(dim)
    for start in range(0, dim, width):
        stop = min(start + width, dim)
        target[start:stop, start:].addmm_(x[:, start:stop].t(), x[:, start:])


def _strip_width(dim: int) -> int:
    return max(GRAM_STRIP_MIN, -(-dim // 8))


def symmetrize_(matrix: torch.Tensor) -> torch.Tensor:
    """Copy the upper triangle onto the lower one, in place (idempotent on symmetric matrices).

    Works strip by strip so the only temporaries are one diagonal block: an 8B model's S is
    14336² floats, and a whole-matrix ``triu`` would briefly need two more of it.
    """
    dim = matrix.shape[0]
    width = _strip_width(dim)
    for start in range(0, dim, width):
        stop = min(start + width, dim)
        matrix[start:stop, :start] = matrix[:start, start:stop].t()
        block = matrix[start:stop, start:stop]
        block.copy_(torch.triu(block) + torch.triu(block, 1).t())
    return matrix


class CovarianceAccumulator:
    """Feeds batches through the model and adds their token outer products to a state.

    A Lightning callback drives this itself (``step`` per batch, all-reduce ``state.tensors()``);
    :func:`fit_covariance` is the same loop over a dataloader. The sums are accumulated on and
    above the diagonal only (:func:`add_gram_upper_`); reading :attr:`state` mirrors them into
    full symmetric matrices, so every consumer sees ordinary covariance sums.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module],
        loss_fn: LossFn = causal_lm_loss,
        fisher: str = "true",
        dtype: torch.dtype = torch.float32,
        compute_dtype: str | torch.dtype | None = None,
        activation_tokens: str = "all",
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.sample_labels = check_fisher(fisher) == "true"
        self._state = CovarianceState.zeros(modules, dtype=dtype, device=model_device(model))
        operands = resolve_compute_dtype(compute_dtype, dtype)  # the grams' operands; sums stay in dtype
        self.capture = Capture(
            modules, on_activation=self._add_activation, on_gradient=self._add_gradient, dtype=operands,
            activation_tokens=activation_tokens,
        )

    @property
    def state(self) -> CovarianceState:
        """The sums so far, as full symmetric matrices (mirrored from the accumulated upper triangles)."""
        for sums in (self._state.activation_sums, self._state.gradient_sums):
            for matrix in sums.values():
                symmetrize_(matrix)
        return self._state

    def _add_activation(self, name: str, activation: torch.Tensor, count: int) -> None:
        add_gram_upper_(self._state.activation_sums[name], activation)
        self._state.activation_counts[name] += count

    def _add_gradient(self, name: str, gradient: torch.Tensor, count: int) -> None:
        add_gram_upper_(self._state.gradient_sums[name], gradient)
        self._state.gradient_counts[name] += count

    def step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Accumulate one batch; returns its per-sequence losses (detached)."""
        with eval_mode(self.model), self.capture:
            losses = capture_pass(self.model, batch, self.loss_fn, self.capture, sample_labels=self.sample_labels)
        self._state.n_sequences += batch_size(batch)
        return losses


def fit_covariance(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    modules: Mapping[str, nn.Module],
    loss_fn: LossFn = causal_lm_loss,
    fisher: str = "true",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    streams: int = 1,
    compute_dtype: str | torch.dtype | None = None,
) -> CovarianceState:
    """Covariance phase over a whole dataloader; returns the (un-normalised) state.

    ``streams > 1`` (CPU only) splits every batch into that many parts run at once, one
    accumulator per stream, and merges their sums (:mod:`infra_pl.ekfac.streams`).
    ``compute_dtype="bfloat16"`` multiplies bfloat16 operands, summed in ``dtype``
    (:mod:`infra_pl.ekfac.precision`).
    """
    resolve_compute_dtype(compute_dtype, dtype)  # a bad value fails before the pass starts
    return accumulation_pass(
        lambda: CovarianceAccumulator(
            model, modules, loss_fn=loss_fn, fisher=fisher, dtype=dtype, compute_dtype=compute_dtype
        ),
        loader,
        description="EK-FAC covariance",
        progress=progress,
        streams=streams,
        sampled_labels=check_fisher(fisher) == "true",
        device=model_device(model),
    )
