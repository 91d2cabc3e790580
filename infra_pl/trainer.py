"""``InfraTrainer``: the Lightning Trainer plus the ``attribute`` subcommand.

``attribute`` runs the attribution callbacks (factors, then scores, then reports) in order. Each
callback asks the trainer for *dedicated passes* over a data split; a pass is a
``trainer.predict`` run with a phase name the callbacks read. Predict is used (not a hand-written
loop) because it keeps Lightning's device, precision and strategy handling and, under DDP, an
unrepeated distributed sampler. Under FSDP the first pass wraps the module and restores the
checkpoint, and the weights are then gathered on every rank until ``attribute`` ends
(:mod:`infra_pl.fsdp`), so the passes are those of DDP.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import lightning as L
from lightning.pytorch.callbacks import Callback

from infra_pl.allocator import release_free_heap
from infra_pl.fsdp import check_strategy, gather_after_restore, is_fsdp, is_fsdp_wrapped, reuse_wrapper
from infra_pl.hooks import AttributionState
from infra_pl.protocol import model_is_built, require_data


class AttributionStep(Callback):
    """Base class of the callbacks that ``infra-pl attribute`` drives.

    Subclasses implement :meth:`run_attribution`; ``order`` decides when they run (factors 10,
    scores 20, reports 30). Outside ``attribute`` these callbacks do nothing, so they can sit in the
    same YAML ``trainer.callbacks`` list that ``fit`` and ``validate`` use.
    """

    order: int = 50

    def preflight(self, trainer: "InfraTrainer", pl_module: L.LightningModule, datamodule: Any) -> None:
        """Checks that need the data but no pass, run for every step before the first pass starts,
        so an option that cannot work on this dataset is refused before hours of factor passes."""

    def run_attribution(self, trainer: "InfraTrainer", pl_module: L.LightningModule, datamodule: Any) -> None:
        raise NotImplementedError


PHASE_LABELS = {
    "check/gradients": "Gradient check",
    "ekfac/setup": "Loading model",
    "ekfac/covariance": "EK-FAC covariance",
    "ekfac/lambda": "EK-FAC lambda",
    "influence/measure": "Measurement gradient",
    "influence/instance": "Instance scores",
    "influence/tokens": "Token scores",
}


class _PhaseProgressLabel(Callback):
    """Names the predict progress bar after the attribution phase (instead of "Predicting")."""

    def __init__(self, label: str):
        self.label = label
        self._done = False

    def on_predict_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self._done:
            return
        self._done = True
        bar = trainer.progress_bar_callback
        try:
            tqdm_bar = getattr(bar, "predict_progress_bar", None)
            if hasattr(tqdm_bar, "set_description"):  # TQDMProgressBar
                tqdm_bar.set_description(self.label)
            elif getattr(bar, "progress", None) is not None and getattr(bar, "predict_progress_bar_id", None) is not None:
                bar.progress.update(bar.predict_progress_bar_id, description=self.label)  # RichProgressBar
        except Exception:  # noqa: BLE001 - a label is cosmetic; never let it break a pass
            pass


def checkpoint_description(path: Any, checkpoint: dict[str, Any] | None = None) -> str:
    """``PATH (global step N, epoch E, written YYYY-MM-DD HH:MM:SS)``: which weights a run used.

    The step and epoch come from the loaded checkpoint dict; the time is the file's modification
    time, so a stale ``last.ckpt`` from an earlier fit is visible at a glance.
    """
    parts = []
    if checkpoint is not None:
        if "global_step" in checkpoint:
            parts.append(f"global step {checkpoint['global_step']}")
        if "epoch" in checkpoint:
            parts.append(f"epoch {checkpoint['epoch']}")
    try:
        written = datetime.datetime.fromtimestamp(os.path.getmtime(path))
        parts.append(f"written {written:%Y-%m-%d %H:%M:%S}")
    except (OSError, TypeError, ValueError):
        pass
    return f"{path} ({', '.join(parts)})" if parts else str(path)


class CheckpointReport(Callback):
    """Says which checkpoint ``validate``/``attribute`` loaded: path, global step, epoch, file time.

    A second fit into the same folder used to write ``last-v1.ckpt`` while the next commands loaded
    the old ``last.ckpt``; naming the step and time makes such a mix-up visible. The description is
    kept as ``trainer.loaded_checkpoint`` for the end-of-run summary.
    """

    def __init__(self) -> None:
        self._seen: Any = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._report(trainer, checkpoint)

    def _start(self, trainer: L.Trainer, *args: Any) -> None:
        # Weights-only checkpoints skip the callbacks' on_load_checkpoint: name at least path and time.
        if trainer.ckpt_path is not None and self._seen != trainer.ckpt_path:
            self._report(trainer, None)

    on_validation_start = on_test_start = on_predict_start = _start

    def _report(self, trainer: L.Trainer, checkpoint: dict[str, Any] | None) -> None:
        path = trainer.ckpt_path
        if path is None:
            return
        self._seen = path
        description = checkpoint_description(path, checkpoint)
        trainer.loaded_checkpoint = description  # type: ignore[attr-defined]
        if trainer.is_global_zero:
            print(f"[infra-pl] checkpoint: {description}", file=sys.stderr)


class AttributionStopped(SystemExit):
    """``attribute`` stopped on SIGTERM at a batch boundary; what was written is whole, a rerun resumes.

    A ``SystemExit`` with status 143 (128 + SIGTERM, what a scheduler or ``docker stop`` expects),
    so that ``except Exception`` in user code does not swallow it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(128 + signal.SIGTERM)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _StopAtBatchBoundary(Callback):
    """Ends a pass before its next batch once SIGTERM arrived (first in the callback list).

    Raising ``StopIteration`` here takes the prediction loop's own end-of-data path: no callback has
    seen the batch yet, and every ``on_predict_end`` runs, so score parts are flushed and stream
    workers finish. The trainer then raises :class:`AttributionStopped` instead of handing the cut
    pass's result on (a phase cut short is never saved as finished).
    """

    def __init__(self) -> None:
        self.cut = False

    def on_predict_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if getattr(trainer, "received_sigterm", False):
            trainer._stop_requested = True  # type: ignore[attr-defined]
        if getattr(trainer, "_stop_requested", False):
            self.cut = True
            raise StopIteration


class _GatherWeights(Callback):
    """Gathers the FSDP weights when a pass starts (after Lightning's setup and checkpoint restore)."""

    def __init__(self, gathered: Any) -> None:
        self.gathered = gathered

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.gathered.enter()


def _no_prediction(*args: Any, **kwargs: Any) -> None:
    """``predict_step`` during attribution passes: nothing to predict, the callbacks do the work."""
    return None


GRADIENT_CHECK_PHASE = "check/gradients"


class InfraTrainer(L.Trainer):
    """Trainer with ``attribute(model, datamodule, ckpt_path)``.

    ``attribution_phase`` names the pass in progress (``None`` outside attribution passes);
    ``attribution_state`` (:class:`infra_pl.hooks.AttributionState`) carries the products
    between steps: the events their hooks received.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded_checkpoint: str | None = None
        if not any(isinstance(c, CheckpointReport) for c in self.callbacks):
            self.callbacks.append(CheckpointReport())
        self.attribution_phase: str | None = None
        self.attribution_state = AttributionState()
        self._pending_ckpt_path: str | None = None
        self._stop_requested = False
        self._gathered = None
        if is_fsdp(self.strategy):  # see infra_pl.fsdp: one wrapper for every run, weights gathered for attribution
            from infra_pl.fsdp import GatheredWeights

            reuse_wrapper(self.strategy)
            self._gathered = GatheredWeights(self.strategy)
            self.strategy._infra_pl_gathered = self._gathered
            gather_after_restore(self.strategy, self._gathered)

    # ------------------------------------------------------------- stopping
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self._stop_requested:  # a second SIGTERM: stop now (written files are whole: atomic writes)
            print("[infra-pl] second SIGTERM: exiting at once", file=sys.stderr, flush=True)
            os._exit(128 + signal.SIGTERM)
        self._stop_requested = True
        if self.is_global_zero:
            print("[infra-pl] SIGTERM: attribution stops at the next batch boundary (parts written so far are kept; "
                  "run the same command again to resume)", file=sys.stderr, flush=True)

    def _check_stop(self, where: str) -> None:
        if self._stop_requested:
            message = (f"[infra-pl] attribute stopped by SIGTERM {where}; finished phases and score parts are on "
                       f"disk under {self.attribution_dir()} (and the factors folder); run the same command again to resume")
            if self.is_global_zero:
                print(message, file=sys.stderr, flush=True)
            raise AttributionStopped(message)

    # ---------------------------------------------------------------- passes
    @property
    def pending_checkpoint(self) -> str | None:
        """The checkpoint ``attribute`` was given and the next pass will load (None once loaded)."""
        return self._pending_ckpt_path

    @property
    def weights_gathered(self) -> bool:
        """Whether the model's weights can be read whole: always, except under FSDP before the first pass of
        ``attribute`` has gathered them (:mod:`infra_pl.fsdp`)."""
        return self._gathered is None or self._gathered.active or not is_fsdp_wrapped(self.strategy)

    def attribution_dir(self) -> Path:
        """Stable output folder of attribution (not per logger version, so runs can resume)."""
        return Path(self.default_root_dir) / "attribution"

    def run_attribution_pass(
        self,
        phase: str,
        model: L.LightningModule,
        datamodule: Any,
        split: str = "train",
        batch_size: int | None = None,
        indices: list[int] | None = None,
        loader: Any = None,
    ) -> None:
        """One dedicated pass with callbacks listening for ``phase``.

        Iterates ``loader`` when given (e.g. a measurement's own sequences), else
        ``datamodule.attribution_dataloader(split, batch_size, indices)`` (the data protocol,
        :class:`infra_pl.protocol.AttributionData`). The datamodule stays attached as
        ``trainer.datamodule`` so the module can reach it (SFTModule reads its tokenizer).
        """
        if loader is None:
            require_data(datamodule, ["attribution_dataloader"], f"the attribution pass '{phase}'")
            loader = datamodule.attribution_dataloader(split, batch_size, indices)
        if isinstance(datamodule, L.LightningDataModule):
            self.datamodule = datamodule
            datamodule.trainer = self
        self.attribution_phase = phase
        inference_mode = self.predict_loop.inference_mode
        self.predict_loop.inference_mode = False  # callbacks need autograd inside the pass
        ckpt_path, self._pending_ckpt_path = self._pending_ckpt_path, None
        self._check_stop(f"before the pass '{phase}'")
        label = _PhaseProgressLabel(PHASE_LABELS.get(phase, phase))
        self.callbacks.append(label)
        stop = _StopAtBatchBoundary()
        self.callbacks.insert(0, stop)  # before any callback sees a batch
        own_step = vars(model).get("predict_step")
        # The work happens in the callbacks' batch hooks; a user's predict_step (generation, say)
        # must not run on every attribution batch, so it is shadowed for the pass.
        model.predict_step = _no_prediction
        if self._gathered is not None:
            # Under FSDP the strategy's predict_step would run the FSDP root forward (unshard, reshard) on
            # weights that are gathered for the whole attribution: skip it too (nothing is predicted).
            self.strategy.predict_step = _no_prediction
        release_free_heap()  # each pass starts from a compact heap (infra_pl.allocator)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*predict returned None.*")
                # Token-budget batches (ReasoningDataModule.attribution_max_tokens) cover every example.
                warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
                self.predict(model, dataloaders=loader, return_predictions=False, ckpt_path=ckpt_path)
        finally:
            del model.predict_step
            if own_step is not None:
                model.predict_step = own_step
            if self._gathered is not None:
                vars(self.strategy).pop("predict_step", None)
            self.callbacks.remove(label)
            self.callbacks.remove(stop)
            self.predict_loop.inference_mode = inference_mode
            self.attribution_phase = None
            release_free_heap()
        if stop.cut:  # the pass ended early: its result is partial and must not be used
            self._check_stop(f"during the pass '{phase}'")

    # ------------------------------------------------------------ subcommand
    def attribute(
        self, model: L.LightningModule, datamodule: Any = None, ckpt_path: str | None = None, gradient_check: bool = True
    ) -> AttributionState:
        """Fit (or reuse) EK-FAC factors and compute influence scores with the attribution callbacks.

        The attribution options are the init_args of those callbacks in ``trainer.callbacks``.

        Args:
            model: the module to attribute (SFTModule), built from the config.
            datamodule: the data: training examples to score and the evaluation items whose
                correct answers define the measurements.
            ckpt_path: the fitted weights to attribute, e.g. ``runs/demo/checkpoints/last.ckpt``
                (the file ``fit`` wrote). Model settings the config leaves unset come from the
                checkpoint's hyperparameters; without it the model is scored as configured (for
                the demo: untrained random weights).
            gradient_check: before the first pass, compare the padded, batched per-example
                gradients of 4 training sequences with unpadded one-by-one float32 ones (seconds);
                warn when they differ, refuse when they are wrong (``infra-pl check`` prints every
                module's error). ``false`` skips it.
        """
        steps = sorted((c for c in self.callbacks if isinstance(c, AttributionStep)), key=lambda c: c.order)
        if not steps:
            raise ValueError(
                "`attribute` found no attribution callbacks; add infra_pl.callbacks.EKFACFactors (and the score "
                "callbacks) to trainer.callbacks in the YAML"
            )
        if ckpt_path is not None and not Path(ckpt_path).exists():
            raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
        check_strategy(self.strategy)  # FSDP runs (weights gathered, infra_pl.fsdp); FSDP2/ZeRO-3 are refused
        if ckpt_path is None and not getattr(model, "hparams", {}).get("name_or_path") and not model_is_built(model):
            print(
                "[infra-pl] warning: `attribute` without --ckpt_path scores the model as configured "
                "(for the demo: untrained random weights)",
                file=sys.stderr,
            )
        self._pending_ckpt_path = ckpt_path
        require_data(datamodule, ["attribution_ids", "attribution_dataloader"], "`attribute`")
        if callable(getattr(datamodule, "prepare_data", None)):
            datamodule.prepare_data()
        if callable(getattr(datamodule, "setup", None)):
            datamodule.setup("predict")
        self.attribution_state = AttributionState()
        self._stop_requested = False
        # SIGTERM (a scheduler's preemption, `docker stop`) ends the run at the next batch boundary
        # with status 143; Lightning's own handler, installed during each pass, calls this one too.
        installed = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if installed else None
        try:
            with self._full_weights():
                for step in steps:
                    step.preflight(self, model, datamodule)
                if gradient_check:
                    from infra_pl.gradcheck import enforce

                    result = self.gradient_check(model, datamodule)
                    if self.is_global_zero:
                        enforce(result)
                    elif result.status == "refuse":
                        raise SystemExit(1)  # rank zero raises the message
                for step in steps:
                    self._check_stop(f"before {type(step).__name__}")
                    step.run_attribution(self, model, datamodule)
        finally:
            if installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        return self.attribution_state

    @contextlib.contextmanager
    def _full_weights(self) -> Iterator[None]:
        """Under FSDP: the full weights on every rank from the first pass's start to the end of the block.

        The first pass wraps the module and restores the checkpoint (Lightning's setup); the weights
        are gathered right after the restore (:func:`infra_pl.fsdp.gather_after_restore`), or when the
        pass starts without a checkpoint (:class:`_GatherWeights`), and stay so: fingerprints, shapes
        and every later pass see the unsharded model (:mod:`infra_pl.fsdp`). Nothing otherwise.
        """
        if self._gathered is None:
            yield
            return
        gather = _GatherWeights(self._gathered)
        self.callbacks.insert(0, gather)  # before the pass hooks' start, which may read weights
        self._gathered.wanted = True
        try:
            yield
        finally:
            self._gathered.wanted = False
            self.callbacks.remove(gather)
            self._gathered.exit()

    def validate(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.validate``; inside ``attribute`` under FSDP it runs on the wrapped, sharded model."""
        if self._gathered is None:
            return super().validate(*args, **kwargs)
        with self._gathered.suspended():
            return super().validate(*args, **kwargs)

    # ------------------------------------------------------- gradient check
    def _tracked_modules_option(self) -> Any:
        """The ``modules`` option of the configured factor fit (the layers attribution tracks)."""
        for callback in self.callbacks:
            if isinstance(callback, AttributionStep) and type(callback).__name__ == "EKFACFactors":
                return callback.options.modules
        return None

    def gradient_check(self, model: L.LightningModule, datamodule: Any, sequences: int | None = None) -> Any:
        """One ``check/gradients`` pass over a few training sequences spread over the data (see :mod:`infra_pl.gradcheck`).

        Returns the :class:`infra_pl.gradcheck.GradientCheckResult` (under DDP with the largest
        error of all ranks). Raises nothing itself: :func:`infra_pl.gradcheck.enforce` decides.
        """
        from infra_pl.gradcheck import SEQUENCES, spread_indices

        k = sequences or SEQUENCES
        indices = spread_indices(len(datamodule.attribution_ids("train")), k)
        from infra_pl.gradcheck import check_gradients
        from infra_pl.lightning_runner import LightningRunner
        from infra_pl.protocol import attribution_model, loss_fn_for
        from infra_pl.runner import Pass

        modules = self._tracked_modules_option()
        found: dict[str, Any] = {}

        def probe(batch: Any) -> None:  # in the pass: checkpoint loaded, network on the run's device and dtype
            if "result" not in found:
                found["result"] = check_gradients(attribution_model(model), batch, loss_fn_for(model), modules)

        limit = self.limit_predict_batches
        self.limit_predict_batches = 1  # one batch of k sequences (a token budget may split them)
        try:
            loader = datamodule.attribution_dataloader("train", len(indices), indices)
            LightningRunner(self, model, datamodule).run(Pass(GRADIENT_CHECK_PHASE, probe), loader)
        finally:
            self.limit_predict_batches = limit
        result = found.get("result")
        if result is None:
            raise RuntimeError("gradient check: the check pass saw no batch")
        if self.world_size > 1:
            import torch

            worst = torch.tensor([result.worst[1]], device=self.strategy.root_device, dtype=torch.float64)
            worst = self.strategy.reduce(worst, reduce_op="max")
            name = result.worst[0]
            result.errors[name] = max(result.errors[name], float(worst[0]))
        return result

    def check(
        self, model: L.LightningModule, datamodule: Any = None, ckpt_path: str | None = None, sequences: int = 4
    ) -> Any:
        """Check the per-example gradients attribution would use: padded batches against one-by-one float32.

        Args:
            model: the module to check (SFTModule), built from the config.
            datamodule: the data; the check takes training sequences spread over it.
            ckpt_path: the fitted weights, as for ``attribute``
                (e.g. ``runs/demo/checkpoints/last.ckpt``).
            sequences: how many training sequences (of different lengths) are compared.
        """
        from infra_pl.gradcheck import enforce

        if ckpt_path is not None and not Path(ckpt_path).exists():
            raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
        require_data(datamodule, ["attribution_ids", "attribution_dataloader"], "`check`")
        for hook, args in (("prepare_data", ()), ("setup", ("predict",))):
            if callable(getattr(datamodule, hook, None)):
                getattr(datamodule, hook)(*args)
        self._pending_ckpt_path = ckpt_path
        self._stop_requested = False
        check_strategy(self.strategy)
        with self._full_weights():
            result = self.gradient_check(model, datamodule, sequences)
        if self.is_global_zero:
            print(result.table(), file=sys.stderr)
        return enforce(result) if self.is_global_zero else result
