"""Phase 3: the eigenvalue correction Λ = mean over sequences of (Q_S^T G_n Q_A)^2.

K-FAC's eigenvalues are products of A's and S's eigenvalues, which assumes activations and
gradients are independent; EK-FAC (George et al. 2018) replaces them with the actual second
moment of the per-sequence gradient in the Kronecker eigenbasis, i.e. the diagonal of
(Q_S ⊗ Q_A)^T F (Q_S ⊗ Q_A) where F is the Fisher of the per-sequence loss.

Only one batch of per-sequence gradients exists at a time: each batch is rotated, squared and
summed into the state right in the backward hook. The state keeps sums and a sequence count so
it merges across ranks like the covariance state. Normalisation matches kronfluence 1.0.1: the
sum is divided by the number of sequences (``module/tracker/factor.py`` ``LambdaTracker`` adds
the batch size; ``factor/config.py`` ``Ekfac.prepare`` divides), and the default damping is
0.1 × mean(Λ) per module (``HEURISTIC_DAMPING_SCALE`` in ``utils/constants.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from infra_pl.ekfac.capture import Capture
from infra_pl.ekfac.eigen import EigenBasis, check_finite
from infra_pl.ekfac.gradients import sequence_gradients
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import LayerShape, layer_shape
from infra_pl.ekfac.passes import batch_size, capture_pass, check_fisher, eval_mode, model_device
from infra_pl.ekfac.precision import resolve_compute_dtype
from infra_pl.ekfac.streams import accumulation_pass


@dataclass
class LambdaState:
    """Un-normalised sums of squared rotated per-sequence gradients, and the sequence count."""

    shapes: dict[str, LayerShape]
    sums: dict[str, torch.Tensor]  # [out, in(+1)]
    n_sequences: torch.Tensor  # int64 scalar

    @classmethod
    def zeros(
        cls, modules: Mapping[str, nn.Module], dtype: torch.dtype = torch.float32, device: torch.device | None = None
    ) -> "LambdaState":
        shapes = {name: layer_shape(m) for name, m in modules.items()}
        return cls(
            shapes=shapes,
            sums={n: torch.zeros(s.matrix_shape, dtype=dtype, device=device) for n, s in shapes.items()},
            n_sequences=torch.zeros((), dtype=torch.int64, device=device),
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor in a fixed order: all-reduce each with SUM to combine ranks."""
        return [self.sums[n] for n in self.shapes] + [self.n_sequences]

    def merge(self, other: "LambdaState") -> "LambdaState":
        """Sum of two states over the same modules."""
        if list(other.shapes) != list(self.shapes) or other.shapes != self.shapes:
            raise ValueError("cannot merge Lambda states over different modules or shapes")
        return LambdaState(
            shapes=dict(self.shapes),
            sums={n: self.sums[n] + other.sums[n] for n in self.shapes},
            n_sequences=self.n_sequences + other.n_sequences,
        )

    def lambdas(self, name: str) -> torch.Tensor:
        """Normalised Λ for one module (mean over sequences); raises if it is not finite."""
        if int(self.n_sequences) <= 0:
            raise ValueError("no sequences were accumulated in the Lambda phase")
        value = self.sums[name] / self.n_sequences
        check_finite(value, name, "eigenvalue correction Λ")
        return value


def rotated_sequence_gradients(
    activations: torch.Tensor,
    output_grads: torch.Tensor,
    activation_eigenvectors: torch.Tensor,
    gradient_eigenvectors: torch.Tensor,
) -> torch.Tensor:
    """Q_S^T G_n Q_A for each sequence of a batch: [B, out, in(+1)].

    Q_S^T G_n Q_A = sum_t (Q_S^T g_t)(Q_A^T a_t)^T, so either the tokens are rotated before the
    token sum or the summed gradient after it; the cheaper order is picked from the shapes
    (short sequences: rotate tokens; long sequences: rotate the [out, in] gradient).
    """
    tokens = activations.shape[1]
    out_dim, in_dim = output_grads.shape[-1], activations.shape[-1]
    if tokens * (out_dim * out_dim + in_dim * in_dim) < out_dim * in_dim * (out_dim + in_dim):
        return sequence_gradients(activations @ activation_eigenvectors, output_grads @ gradient_eigenvectors)
    grads = sequence_gradients(activations, output_grads)
    return gradient_eigenvectors.t() @ grads @ activation_eigenvectors


class LambdaAccumulator:
    """Feeds batches through the model and accumulates squared rotated per-sequence gradients.

    Like :class:`~infra_pl.ekfac.covariance.CovarianceAccumulator`, a callback can call ``step``
    per batch and all-reduce ``state.tensors()``; :func:`fit_lambda` is the dataloader loop.
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Mapping[str, nn.Module],
        eigen: Mapping[str, EigenBasis],
        loss_fn: LossFn = causal_lm_loss,
        fisher: str = "true",
        dtype: torch.dtype = torch.float32,
        compute_dtype: str | torch.dtype | None = None,
    ) -> None:
        missing = [n for n in modules if n not in eigen]
        if missing:
            raise ValueError(f"no eigendecomposition for modules {missing}")
        device = model_device(model)
        self.model = model
        self.loss_fn = loss_fn
        self.sample_labels = check_fisher(fisher) == "true"
        operands = resolve_compute_dtype(compute_dtype, dtype)  # rotations' operands; the sums stay in dtype
        self.bases = {
            n: (
                eigen[n].activation_eigenvectors.to(device=device, dtype=operands),
                eigen[n].gradient_eigenvectors.to(device=device, dtype=operands),
            )
            for n in modules
        }
        self.state = LambdaState.zeros(modules, dtype=dtype, device=device)
        self.capture = Capture(modules, on_pair=self._add, dtype=operands)

    def _add(self, name: str, activations: torch.Tensor, output_grads: torch.Tensor) -> None:
        q_a, q_s = self.bases[name]
        rotated = rotated_sequence_gradients(activations, output_grads, q_a, q_s)
        sums = self.state.sums[name]
        sums += rotated.to(sums.dtype).square_().sum(dim=0)  # squared in the sums' dtype, never in bfloat16

    def step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Accumulate one batch; returns its per-sequence losses (detached)."""
        with eval_mode(self.model), self.capture:
            losses = capture_pass(self.model, batch, self.loss_fn, self.capture, sample_labels=self.sample_labels)
        self.state.n_sequences += batch_size(batch)
        return losses


def fit_lambda(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    modules: Mapping[str, nn.Module],
    eigen: Mapping[str, EigenBasis],
    loss_fn: LossFn = causal_lm_loss,
    fisher: str = "true",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    streams: int = 1,
    compute_dtype: str | torch.dtype | None = None,
) -> LambdaState:
    """Lambda phase over a whole dataloader; returns the (un-normalised) state.

    ``streams > 1`` (CPU only): every batch's parts run at once, one accumulator per stream, merged.
    ``compute_dtype="bfloat16"``: rotations with bfloat16 operands, squared and summed in ``dtype``.
    """
    resolve_compute_dtype(compute_dtype, dtype)
    return accumulation_pass(
        lambda: LambdaAccumulator(
            model, modules, eigen, loss_fn=loss_fn, fisher=fisher, dtype=dtype, compute_dtype=compute_dtype
        ),
        loader,
        description="EK-FAC eigenvalue correction",
        progress=progress,
        streams=streams,
        sampled_labels=check_fisher(fisher) == "true",
        device=model_device(model),
    )
