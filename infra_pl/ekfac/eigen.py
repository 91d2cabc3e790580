"""Phase 2: eigendecompose the normalised covariance factors, in float64.

Why float64: the small eigenvalues of A and S set the scale of the correction Λ in the directions
that damping matters most for; a float32 ``eigh`` of a matrix with a 1e6 condition number returns
eigenvectors too inaccurate to trust there. The eigenvectors are stored back in the state's
dtype (kronfluence does the same), which is what the Lambda phase and preconditioning use.
Each module is independent, so a distributed caller can split ``names`` across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from infra_pl.ekfac.covariance import CovarianceState
from infra_pl.progress import progress_bar


class NonFiniteFactorError(ValueError):
    """A factor contains NaN/Inf: usually an overflowing bf16/fp16 forward or a diverged model."""


@dataclass
class EigenBasis:
    """Eigenvectors (columns) and eigenvalues of A and S for one module."""

    activation_eigenvectors: torch.Tensor  # Q_A [in(+1), in(+1)]
    activation_eigenvalues: torch.Tensor
    gradient_eigenvectors: torch.Tensor  # Q_S [out, out]
    gradient_eigenvalues: torch.Tensor


def check_finite(tensor: torch.Tensor, module: str, what: str) -> None:
    """Raise :class:`NonFiniteFactorError` naming the module and factor if ``tensor`` has NaN/Inf."""
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise NonFiniteFactorError(
            f"{what} of module {module!r} contains {int(bad.sum())} NaN/Inf entries "
            f"(of {tensor.numel()}); check for overflow in a low-precision forward pass or a diverged model"
        )


def symmetric_eigh(matrix: torch.Tensor, module: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``eigh`` of the symmetrised matrix; returns (eigenvalues, eigenvectors) in float64."""
    check_finite(matrix, module, what)
    matrix = matrix.to(torch.float64)
    matrix = 0.5 * (matrix + matrix.t())  # accumulated sums are symmetric only up to rounding
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return eigenvalues, eigenvectors


def eigendecompose(
    state: CovarianceState,
    names: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, EigenBasis]:
    """Eigenbases of A and S for ``names`` (default: every module of the state).

    ``dtype`` is the storage dtype of the results (default: the state's accumulation dtype).
    """
    result: dict[str, EigenBasis] = {}
    # Layers fed by the same tensor (an MLP's gate and up projections) have bit-identical A: one eigh
    # serves them all (at Llama-3-8B size that skips 32 float64 eighs of 4096 x 4096).
    shared_a: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for name in progress_bar(list(names or state.shapes), "EK-FAC eigendecomposition", enabled=progress):
        store = dtype or state.activation_sums[name].dtype
        a_cov = state.activation_covariance(name, torch.float64)
        s_cov = state.gradient_covariance(name, torch.float64)
        same = next(((vals, vecs) for seen, vals, vecs in shared_a if seen.shape == a_cov.shape and torch.equal(seen, a_cov)), None)
        a_vals, a_vecs = same if same is not None else symmetric_eigh(a_cov, name, "activation covariance A")
        if same is None:
            shared_a = [(a_cov, a_vals, a_vecs)]  # only the latest: sharing layers are neighbours
        s_vals, s_vecs = symmetric_eigh(s_cov, name, "gradient covariance S")
        result[name] = EigenBasis(
            # copies: modules sharing A must not share storage (safetensors refuses shared tensors)
            activation_eigenvectors=a_vecs.to(store, copy=True).contiguous(),
            activation_eigenvalues=a_vals.to(store, copy=True),
            gradient_eigenvectors=s_vecs.to(store).contiguous(),
            gradient_eigenvalues=s_vals.to(store),
        )
        del s_cov, s_vals, s_vecs  # free this module's float64 S buffers before the next eigh
    return result
