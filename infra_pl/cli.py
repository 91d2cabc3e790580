"""Command line: ``infra-pl fit|validate -c configs/demo.yaml`` (LightningCLI).

``InfraTrainer`` is where the ``attribute`` subcommand lives once attribution is wired in; the
CLI subclass prints where every artefact of a run went, because the first thing a user does
after a run is look for its logs, checkpoint and correctness file.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.callbacks import ModelCheckpoint

from infra_pl.data.datamodule import ReasoningDataModule
from infra_pl.module import SFTModule
from infra_pl.threads import configure_threads
from infra_pl.trainer import InfraTrainer


def _checkpoint_path(trainer: L.Trainer) -> str | None:
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            return callback.last_model_path or callback.best_model_path or None
    return None


def correctness_table(verdicts: list[Any]) -> str:
    """Correct/total per domain and difficulty level, as printed after ``validate``."""
    totals: dict[tuple[str, Any], list[int]] = collections.defaultdict(lambda: [0, 0])
    for verdict in verdicts:
        for key in ((verdict.domain, "all"), (verdict.domain, verdict.difficulty)):
            totals[key][0] += int(verdict.correct)
            totals[key][1] += 1
    lines = []
    for domain in sorted({d for d, _ in totals}):
        levels = sorted((lvl for d, lvl in totals if d == domain and lvl != "all"), key=str)
        per_level = "  ".join(f"L{lvl}: {totals[(domain, lvl)][0]}/{totals[(domain, lvl)][1]}" for lvl in levels)
        correct, total = totals[(domain, "all")]
        lines.append(f"  {domain:<5} {correct:>4}/{total:<4} correct   {per_level}")
    return "\n".join(lines)


class InfraCLI(LightningCLI):
    """LightningCLI with infra-pl's model, data and trainer classes as defaults."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "attribute": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--threads",
            type=int | None,
            default=None,
            help="torch CPU threads (default: INFRA_PL_THREADS/OMP_NUM_THREADS, else the cores not busy)",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        threads = configure_threads(config.get("threads"))
        print(f"[infra-pl] using {threads} torch thread(s)", file=sys.stderr)

    def after_fit(self) -> None:
        trainer = self.trainer
        print("\n[infra-pl] fit finished")
        if trainer.logger is not None:
            print(f"  TensorBoard logs : {trainer.logger.log_dir}   (tensorboard --logdir {Path(trainer.logger.log_dir).parent})")
        ckpt = _checkpoint_path(trainer)
        if ckpt:
            print(f"  checkpoint       : {ckpt}")

    def after_validate(self) -> None:
        trainer, model = self.trainer, self.model
        print("\n[infra-pl] validate finished")
        if trainer.logger is not None:
            print(f"  TensorBoard logs : {trainer.logger.log_dir}")
        verdicts = getattr(model, "_verdicts", [])
        if verdicts:
            print("  greedy generation, correct per domain and difficulty level:")
            print(correctness_table(verdicts))
        if getattr(model, "last_correctness_path", None):
            print(f"  correctness file : {model.last_correctness_path}")


    def after_attribute(self) -> None:
        state = getattr(self.trainer, "attribution_state", {})
        print("\n[infra-pl] attribute finished")
        if state.get("factors_dir"):
            print(f"  EK-FAC factors   : {state['factors_dir']}")
        for label, key in (("instance scores", "instance_scores_path"), ("token scores", "token_scores_path"),
                           ("sentence scores", "sentence_scores_path"), ("report", "report_path")):
            if state.get(key):
                print(f"  {label:<16} : {state[key]}")


def run_cli(args: list[str] | None = None) -> InfraCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    return InfraCLI(
        SFTModule,
        ReasoningDataModule,
        trainer_class=InfraTrainer,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "infra-pl: SFT on math/code reasoning data + influence attribution."},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point (``infra-pl``); returns nothing so the exit status is 0 on success."""
    run_cli(args)


if __name__ == "__main__":
    main()
