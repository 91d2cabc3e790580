"""``InfluenceScores``: measurement directions, instance, token and sentence scores as a step of ``attribute``.

An adapter: the scoring run (directions, the instance pass with resume and partitions, pairwise,
token and sentence scores) is :class:`infra_pl.influence.driver.ScoreRun`, the same driver
:func:`infra_pl.influence.driver.compute_scores` runs in process; here its passes go through the
trainer (:class:`infra_pl.lightning_runner.LightningRunner`). Before any pass (factors included)
:meth:`preflight` checks the protocol methods each requested product needs, the measurements'
data, and tags the training traces' behaviours. Afterwards every callback's
``on_scores_ready(trainer, pl_module, ScoresReady)`` is called. With ``index: true`` the instance
pass also writes the training-gradient index; ``from_index: true`` scores new measurements against
it without a pass over the training set (token and sentence products need that pass and are off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from infra_pl.data.training_tags import Tags, resolve_auto_tagger, tag_training_set
from infra_pl.ekfac.streams import check_streams
from infra_pl.hooks import dispatch, tensorboard_writer
from infra_pl.influence.driver import ScoreRun
from infra_pl.influence.options import ScoreOptions
from infra_pl.lightning_runner import LightningRunner
from infra_pl.measurements import MeasurementContext, build_specs
from infra_pl.options import callback_options
from infra_pl.protocol import ProtocolError, attribution_model, logits_fn_for, loss_fn_for, require_data, require_module
from infra_pl.trainer import AttributionStep


@callback_options(ScoreOptions)
class InfluenceScores(AttributionStep):
    """Influence of every training example on the measurements, plus token and sentence detail.

    What each product needs from the module and datamodule is ``infra_pl.protocol``; missing
    pieces are reported by name before any pass runs.
    """

    order = 20
    options: ScoreOptions

    def _setup(self) -> None:
        from infra_pl.data.tagging import resolve_tagger

        self.measurements = self.options.measurement_objects()  # a bad target or fallback fails at config time
        self.tagger = self.options.tagger if self.options.tagger == "auto" else resolve_tagger(self.options.tagger)
        self._tags: Tags | None = None

    def scores_dir(self, trainer: Any) -> Path:
        return Path(self.options.output_dir) if self.options.output_dir else trainer.attribution_dir() / "scores"

    def check_requirements(self, pl_module: Any, datamodule: Any) -> None:
        """Fail before any pass when a requested product lacks a protocol method (named in the error)."""
        require_module(pl_module, ["attribution_model", "per_example_loss"], "InfluenceScores")
        require_data(datamodule, ["attribution_ids", "attribution_dataloader"], "InfluenceScores")
        check_streams(self.options.streams, getattr(pl_module, "device", None))
        detail = not self.options.from_index  # token and sentence scores read the training set again
        if self.options.wants_tokens and detail:
            require_module(pl_module, ["attribution_logits"], "InfluenceScores token scores",
                           "Or set token_top_k: 0 on InfluenceScores.")
        if self.options.sentence_top_k > 0 and detail:
            hint = "Or set sentence_top_k: 0 on InfluenceScores."
            require_module(pl_module, ["attribution_logits"], "InfluenceScores sentence scores", hint)
            require_data(datamodule, ["attribution_example"], "InfluenceScores sentence scores", hint)
            for attribute in ("tokenizer", "max_length"):
                if getattr(datamodule, attribute, None) is None:
                    raise ProtocolError(
                        f"{type(datamodule).__name__} has no '{attribute}', which InfluenceScores sentence scores "
                        f"need to re-tokenise examples with a sentence removed. {hint}"
                    )

    # --------------------------------------------------------------- entry point
    def preflight(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        """Before any pass (factors included): protocol, the measurements' data, and behaviour tags."""
        self.check_requirements(pl_module, datamodule)
        context = MeasurementContext(trainer, pl_module, datamodule, self.options.batch_size)
        for measurement in self.measurements:
            check = getattr(measurement, "preflight", None)
            if callable(check):
                check(context)
        self._tags = self._tag(trainer, datamodule)

    def _tag(self, trainer: Any, datamodule: Any) -> Tags:
        self.tagger = resolve_auto_tagger(self.tagger, datamodule)
        cache = self.scores_dir(trainer) / "behaviour_tags" if trainer.is_global_zero else None
        return tag_training_set(datamodule, self.tagger, cache, workers=self.options.tag_workers)

    def run_attribution(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        self.check_requirements(pl_module, datamodule)
        factors_event = trainer.attribution_state.require("factors", "InfluenceScores", "EKFACFactors")
        tags, self._tags = self._tags or self._tag(trainer, datamodule), None
        specs = build_specs(self.measurements, MeasurementContext(trainer, pl_module, datamodule, self.options.batch_size))
        wants_logits = (self.options.wants_tokens or self.options.sentence_top_k > 0) and not self.options.from_index
        logits_fn = logits_fn_for(pl_module) if wants_logits else None
        run = ScoreRun(
            self.options, LightningRunner(trainer, pl_module, datamodule), attribution_model(pl_module), datamodule,
            factors_event.factors, specs, self.scores_dir(trainer), tags, loss_fn=loss_fn_for(pl_module),
            logits_fn=logits_fn, partitions=factors_event.partitions,
        )
        event = run.run()
        self._log_refinement(trainer, event.measurement_info)
        trainer.attribution_state.scores = event
        dispatch(trainer, pl_module, event)

    @staticmethod
    def _log_refinement(trainer: Any, info: dict[str, Any]) -> None:
        """CG residuals per iteration to TensorBoard (``refine/<measurement>/relative_residual``)."""
        writer = tensorboard_writer(trainer) if trainer.is_global_zero else None
        if writer is None:
            return
        for name, entry in info.items():
            for step, value in enumerate((entry.get("refinement") or {}).get("residuals", [])):
                writer.add_scalar(f"refine/{name}/relative_residual", value, step)
