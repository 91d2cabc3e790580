"""``EKFACFactors``: the EK-FAC factor fit (or reuse) as a step of ``infra-pl attribute``.

An adapter: the fit itself (phases, resume, partitions, reuse checks) is
:class:`infra_pl.ekfac.driver.FactorFit`, the same driver :func:`infra_pl.ekfac.fit_factors`
runs in process; here it runs its passes through the trainer
(:class:`infra_pl.lightning_runner.LightningRunner`), and the result is published as
``trainer.attribution_state.factors`` and to every callback's ``on_factors_ready``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from infra_pl.ekfac.driver import FactorFit
from infra_pl.ekfac.modules import resolve_modules
from infra_pl.ekfac.options import FactorOptions
from infra_pl.ekfac.streams import check_streams
from infra_pl.hooks import FactorsReady, dispatch, tensorboard_writer
from infra_pl.lightning_runner import LightningRunner
from infra_pl.options import callback_options
from infra_pl.protocol import attribution_model, loss_fn_for, model_is_built, require_data, require_module, require_true_fisher
from infra_pl.sampling import data_strata
from infra_pl.trainer import AttributionStep


@callback_options(FactorOptions)
class EKFACFactors(AttributionStep):
    """EK-FAC factors of the training-loss Fisher over the tracked (MLP) layers.

    Works on any LightningModule implementing ``attribution_model()`` and ``per_example_loss``
    (plus sampled labels for the true Fisher) with a datamodule implementing
    ``attribution_ids``/``attribution_dataloader`` (``infra_pl.protocol``). Afterwards every
    callback's ``on_factors_ready(trainer, pl_module, FactorsReady)`` is called.
    """

    order = 10
    options: FactorOptions

    def factors_dir(self, trainer: Any) -> Path:
        return Path(self.options.output_dir) if self.options.output_dir else trainer.attribution_dir() / "factors"

    # --------------------------------------------------------- entry point
    def run_attribution(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        require_module(pl_module, ["attribution_model", "per_example_loss"], "EKFACFactors")
        if self.options.fisher == "true":
            require_true_fisher(pl_module, "EKFACFactors")
        require_data(datamodule, ["attribution_ids", "attribution_dataloader"], "EKFACFactors")
        check_streams(self.options.streams, pl_module.device)
        self._ensure_model_ready(trainer, pl_module, datamodule)
        model = attribution_model(pl_module)
        fit = FactorFit(
            self.options, LightningRunner(trainer, pl_module, datamodule), model, loss_fn_for(pl_module),
            lambda indices: datamodule.attribution_dataloader("train", self.options.batch_size, indices),
            list(datamodule.attribution_ids("train")), output_dir=self.factors_dir(trainer),
            batch_shape=batch_shape(self.options, datamodule), strata=data_strata(datamodule, ("domain", "difficulty")),
            reserved_bytes=fsdp_shard_bytes(trainer, model),
        )
        result = fit.run()
        if not result.reused and trainer.is_global_zero and self.options.log_spectra:
            writer = tensorboard_writer(trainer)
            if writer is not None:
                from infra_pl.ekfac.spectra import log_spectra

                log_spectra(writer, result.factors)
        event = FactorsReady(result.output_dir, result.factors, list(result.factors.modules), result.factors.fisher,
                             result.reused, result.partitions)
        trainer.attribution_state.factors = event
        dispatch(trainer, pl_module, event)

    @staticmethod
    def _ensure_model_ready(trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        """Build the model and restore the checkpoint with a one-batch pass, before reading anything on disk.

        Fingerprints of the model decide whether stored phases can be reused, so the checkpoint
        weights must be in place first; under FSDP also gathered (a pass gathers them, :mod:`infra_pl.fsdp`).
        """
        if trainer.pending_checkpoint is None and model_is_built(pl_module) and getattr(trainer, "weights_gathered", True):
            return
        limit = trainer.limit_predict_batches
        trainer.limit_predict_batches = 1
        try:
            trainer.run_attribution_pass("ekfac/setup", pl_module, datamodule, split="train", batch_size=1)
        finally:
            trainer.limit_predict_batches = limit

    def memory_estimate(self, model: torch.nn.Module, datamodule: Any, measurements: int = 2) -> Any:
        """The planner's per-phase estimate (``infra_pl.planner.Estimate``) for this model and batch shape.

        Used by ``partitions: auto`` and by ``infra-pl attribute --print_plan``.
        """
        from infra_pl.planner import estimate

        settings = self.options.planner_settings(*batch_shape(self.options, datamodule), measurements=measurements)
        return estimate(model, settings, modules=list(resolve_modules(model, self.options.modules)))


def fsdp_shard_bytes(trainer: Any, model: torch.nn.Module) -> int:
    """Under FSDP on several ranks: the weight shard each rank keeps beside the gathered full weights (else 0).

    Attribution gathers every FSDP unit's weights on every rank (:mod:`infra_pl.fsdp`); the
    planner counts those full weights once, and FSDP keeps the rank's own shard (weights / ranks)
    besides. On one rank FSDP does not shard, so nothing is kept twice.
    """
    from infra_pl.fsdp import is_fsdp

    world = getattr(trainer, "world_size", 1)
    if not is_fsdp(getattr(trainer, "strategy", None)) or world <= 1:
        return 0
    from infra_pl.planner.model import parameter_bytes

    return parameter_bytes(model) // world


def batch_shape(options: FactorOptions, datamodule: Any) -> tuple[int, int]:
    """(sequences, tokens per sequence) of the largest attribution batch the planner must fit.

    With a token budget (``attribution_max_tokens``), the largest activations come from the
    budget's worth of longest sequences: budget // max_length of them, capped by the batch size.
    """
    size = options.batch_size or getattr(datamodule, "eval_batch_size", None) or 1
    seq_len = getattr(datamodule, "max_length", None) or 2048
    max_tokens = getattr(datamodule, "attribution_max_tokens", None)
    if max_tokens:
        size = max(1, min(size, max_tokens // seq_len))
    return size, seq_len
