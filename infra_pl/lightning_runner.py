"""The Lightning runner: an attribution driver's passes as ``trainer.predict`` runs.

A pass is one ``InfraTrainer.run_attribution_pass`` with a private callback that feeds the
predict batch hooks to the driver's :class:`~infra_pl.runner.Pass`. Lightning keeps the device,
precision and strategy handling and, under DDP, an unrepeated distributed sampler; reductions and
broadcasts go through the trainer's strategy.
"""

from __future__ import annotations

from typing import Any, Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from infra_pl.runner import Pass


class _PassHooks(Callback):
    """Routes one pass's predict hooks to its :class:`Pass` (seed + start, step, end, abort)."""

    def __init__(self, work: Pass) -> None:
        self.work = work
        self.started = False

    def on_predict_start(self, trainer: Any, pl_module: L.LightningModule) -> None:
        if self.work.seed is not None:  # e.g. true-Fisher label sampling: the same draws in both factor passes
            torch.manual_seed(self.work.seed + trainer.global_rank)
        self.started = True
        self.work.start()

    def on_predict_batch_end(self, trainer: Any, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        with torch.enable_grad():  # predict hooks run under no_grad
            self.work.step(batch)

    def on_predict_end(self, trainer: Any, pl_module: L.LightningModule) -> None:
        self.work.end()

    def on_exception(self, trainer: Any, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.started:
            self.work.abort()


class LightningRunner:
    """Runs a driver's passes on an :class:`~infra_pl.trainer.InfraTrainer` (the callbacks' runner)."""

    def __init__(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        self.trainer = trainer
        self.pl_module = pl_module
        self.datamodule = datamodule

    @property
    def device(self) -> torch.device:
        return self.pl_module.device

    @property
    def world_size(self) -> int:
        return self.trainer.world_size

    @property
    def rank(self) -> int:
        return self.trainer.global_rank

    @property
    def is_main(self) -> bool:
        return self.trainer.is_global_zero

    def run(self, work: Pass, loader: Iterable[Any]) -> None:
        hooks = _PassHooks(work)
        self.trainer.callbacks.append(hooks)
        try:
            with work.memory():
                self.trainer.run_attribution_pass(work.phase, self.pl_module, self.datamodule, loader=loader)
        finally:
            self.trainer.callbacks.remove(hooks)

    def all_reduce_sum_(self, tensors: Iterable[torch.Tensor]) -> None:
        if self.world_size == 1:
            return
        for tensor in tensors:
            tensor.copy_(self.trainer.strategy.reduce(tensor.clone(), reduce_op="sum"))

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj if self.world_size == 1 else self.trainer.strategy.broadcast(obj, src=src)

    def broadcast_tensor_(self, tensor: torch.Tensor, src: int) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.broadcast(tensor, src=src)

    def barrier(self) -> None:
        self.trainer.strategy.barrier()
