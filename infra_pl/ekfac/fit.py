"""``fit_factors``: the three EK-FAC phases over one dataloader, end to end.

A Lightning callback wraps the same pieces (``CovarianceAccumulator`` → all-reduce →
``eigendecompose`` → ``LambdaAccumulator`` → all-reduce → ``Factors.from_states``); this function
is the single-process reference for them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from infra_pl.ekfac.covariance import fit_covariance
from infra_pl.ekfac.eigen import eigendecompose
from infra_pl.ekfac.factors import Factors
from infra_pl.ekfac.lambdas import fit_lambda
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import resolve_modules
from infra_pl.ekfac.passes import check_fisher, model_device
from infra_pl.ekfac.precision import dtype_name, resolve_compute_dtype


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed label sampling without disturbing the caller's global RNG streams."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def fit_factors(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    loss_fn: LossFn = causal_lm_loss,
    modules: Mapping[str, nn.Module] | str | Sequence[str] | None = None,
    fisher: str = "true",
    damping: float | None = None,
    progress: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    train_ids: Iterable[object] | None = None,
    partitions: int | Sequence[Sequence[str]] | None = None,
    streams: int = 1,
    compute_dtype: str | torch.dtype | None = None,
) -> Factors:
    """Fit EK-FAC factors of the Fisher of the mean per-sequence training loss.

    ``modules``: a mapping, regex, list of names, or None for :func:`find_tracked_modules`'s
    default. ``fisher="true"`` samples targets from the model (the default, as in the paper);
    ``"empirical"`` uses the data labels. ``damping``: a fixed λ, or None for 0.1·mean(Λ) per
    module. ``dtype``: accumulation/storage dtype (float32, or float64 for reference runs);
    eigendecompositions are always float64. Both data passes are seeded with ``seed``, so with a
    deterministic loader they sample the same labels. ``train_ids`` (example ids of the loader's
    data) are fingerprinted into the factors for later :meth:`Factors.check_compatible` calls.
    ``streams``: on CPU, how many batches run at once, each on its own share of the threads
    (:mod:`infra_pl.ekfac.streams`); the result equals the single-stream fit up to summation order.
    ``compute_dtype``: operand dtype of the passes' big products, ``"bfloat16"`` for hardware with
    bfloat16 matrix units; sums and factors stay in ``dtype`` (:mod:`infra_pl.ekfac.precision`).
    """
    check_fisher(fisher)
    operands = resolve_compute_dtype(compute_dtype, dtype)  # a bad value fails before any pass
    tracked = resolve_modules(model, modules)
    if partitions is not None:
        return _fit_partitioned(
            model, loader, loss_fn, tracked, fisher, damping, progress, seed, dtype, train_ids, partitions, streams,
            compute_dtype,
        )
    device = model_device(model)
    with seeded(seed, device):
        covariance = fit_covariance(model, loader, tracked, loss_fn, fisher, dtype, progress, streams, compute_dtype)
    eigen = eigendecompose(covariance, progress=progress)
    with seeded(seed, device):
        lambdas = fit_lambda(model, loader, tracked, eigen, loss_fn, fisher, dtype, progress, streams, compute_dtype)
    return Factors.from_states(
        covariance, eigen, lambdas, fisher=fisher, damping=damping, model=model, tracked=tracked, train_ids=train_ids,
        compute_dtype=dtype_name(operands),
    )


def _fit_partitioned(
    model, loader, loss_fn, tracked, fisher, damping, progress, seed, dtype, train_ids, partitions, streams,
    compute_dtype,
) -> Factors:
    """One full fit per module group, merged; fingerprints are the whole model's."""
    from infra_pl.ekfac.modules import layer_shape
    from infra_pl.ekfac.partition import check_partitions, split_modules

    if isinstance(partitions, int):
        groups = split_modules({n: layer_shape(m) for n, m in tracked.items()}, partitions)
    else:
        groups = check_partitions(partitions, list(tracked))
    parts = [
        fit_factors(
            model, loader, loss_fn, {n: tracked[n] for n in group}, fisher, damping, progress, seed, dtype,
            streams=streams, compute_dtype=compute_dtype,
        )
        for group in groups
    ]
    return Factors.merge(parts).fingerprint(model, tracked, train_ids)
