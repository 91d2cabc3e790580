"""``fit_factors``: the EK-FAC factor fit over one dataloader, in this process (the pure API).

The same driver as the ``EKFACFactors`` callback (:class:`infra_pl.ekfac.driver.FactorFit`) with
the in-process runner, so it has the callback's resume (``output_dir``), partitions and reuse
checks too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from infra_pl.ekfac.driver import FactorFit
from infra_pl.ekfac.factors import Factors
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.modules import resolve_modules
from infra_pl.ekfac.options import FactorOptions
from infra_pl.ekfac.passes import model_device
from infra_pl.ekfac.streams import check_streams
from infra_pl.runner import InProcessRunner


def fit_factors(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    loss_fn: LossFn = causal_lm_loss,
    modules: Mapping[str, nn.Module] | str | Sequence[str] | None = None,
    fisher: str = "true",
    damping: float | None = None,
    progress: bool = True,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    train_ids: Iterable[object] | None = None,
    partitions: int | Sequence[Sequence[str]] | None = None,
    streams: int = 1,
    compute_dtype: str | torch.dtype | None = None,
    output_dir: str | Path | None = None,
    refit: bool = False,
    activation_tokens: str = "all",
    covariance_max_examples: int | float | str | None = "auto",
    lambda_max_examples: int | float | str | None = "auto",
    sample_seed: int = 0,
    strata: Sequence[Any] | None = None,
    activation_checkpointing: bool = False,
) -> Factors:
    """Fit EK-FAC factors of the Fisher of the mean per-sequence training loss.

    ``modules``: a mapping, regex, list of names, or None for the default (every block's MLP
    projections). ``fisher="true"`` samples targets from the model (the default, as in the paper);
    ``"empirical"`` uses the data labels. ``damping``: a fixed λ, or None for 0.1·mean(Λ) per
    module. ``dtype``: accumulation/storage dtype (float32, or float64 for reference runs);
    eigendecompositions are always float64. Both data passes are seeded with ``seed`` (the caller's
    RNG state is left alone), so with a deterministic loader they sample the same labels.
    ``train_ids`` (example ids of the loader's data) are fingerprinted into the factors for later
    :meth:`Factors.check_compatible` calls. ``streams``/``compute_dtype``: see
    :class:`~infra_pl.ekfac.options.FactorOptions`. ``output_dir``: write every finished phase
    there, resume an interrupted fit from it, and reuse finished factors whose fingerprints match
    (``refit=True`` ignores what is there). ``activation_checkpointing``: run both passes with each
    block checkpointed (:mod:`infra_pl.ekfac.checkpointing`): the same factors, less activation memory.
    """
    options = FactorOptions(
        modules=None if isinstance(modules, Mapping) else (modules if isinstance(modules, (str, type(None))) else list(modules)),
        fisher=fisher, damping=damping, seed=seed, dtype=_dtype_name(dtype), streams=streams,
        compute_dtype="float32" if compute_dtype is None else _dtype_name(compute_dtype),
        partitions=[list(g) for g in partitions] if partitions is not None and not isinstance(partitions, int) else partitions,
        refit=refit, output_dir=None if output_dir is None else str(output_dir), activation_tokens=activation_tokens,
        covariance_max_examples=covariance_max_examples, lambda_max_examples=lambda_max_examples,
        sample_seed=sample_seed, activation_checkpointing=activation_checkpointing,
    )
    device = model_device(model)
    check_streams(streams, device)
    tracked = resolve_modules(model, modules)
    fit = FactorFit(options, InProcessRunner(device, progress=progress), model, loss_fn,
                    lambda indices: loader if indices is None else rows_of(loader, indices),
                    None if train_ids is None else list(train_ids),
                    output_dir=None if output_dir is None else Path(output_dir), tracked=tracked, strata=strata)
    return fit.run().factors


def rows_of(loader: Iterable[Mapping[str, Any]], indices: Sequence[int]) -> Iterator[dict[str, Any]]:
    """The rows of ``loader``'s batches whose ``index`` is in ``indices`` (batches without a kept row are skipped)."""
    wanted = set(int(i) for i in indices)
    for batch in loader:
        if "index" not in batch:
            raise ValueError("sampling examples (covariance_max_examples/lambda_max_examples) needs batches with 'index'")
        keep = [r for r, i in enumerate(batch["index"].tolist()) if i in wanted]
        if keep:
            rows = torch.tensor(keep)
            yield {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == len(batch["index"]) else v)
                   for k, v in batch.items()}


def _dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
