"""The Lightning side of ``infra-pl``: ``InfraCLI`` (LightningCLI) and ``run_cli``.

Imported only when a subcommand runs (or asks for its own ``--help``): importing Lightning takes
seconds, so ``infra_pl.cli`` (the console entry point) answers ``infra-pl --help`` without it.
The CLI subclass prints where every artefact of a run went, because the first thing a user does
after a run is look for its logs, checkpoint and correctness file.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from infra_pl.data.datamodule import ReasoningDataModule
from infra_pl.errors import ConfigError, condense_parser_error, config_error, debug_requested, known_errors
from infra_pl.module import SFTModule
from infra_pl.run_settings import expand_root_placeholder
from infra_pl.threads import configure_for_subcommand
from infra_pl.trainer import InfraTrainer


def _checkpoint_path(trainer: L.Trainer) -> str | None:
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            return callback.last_model_path or callback.best_model_path or None
    return None


def last_checkpoint_without_version(trainer: L.Trainer) -> None:
    """A re-run's ``last.ckpt`` replaces the previous one instead of becoming ``last-v1.ckpt``.

    With Lightning's version counter on, a second ``fit`` into the same folder wrote ``last-v1.ckpt``
    and the ``validate``/``attribute`` commands (``--ckpt_path .../last.ckpt``) silently used the old
    weights. The shipped configs set ``enable_version_counter: false``; configs that do not get it
    turned off here, with a notice, for callbacks that save ``last``.
    """
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and getattr(callback, "_enable_version_counter", False):
            callback._enable_version_counter = False
            print(
                f"[infra-pl] ModelCheckpoint: version counter off, so this fit overwrites "
                f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION} in its folder and later commands load it "
                "(set enable_version_counter: false in the config to silence this notice)",
                file=sys.stderr,
            )


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



def fit_stop_reason(trainer: L.Trainer, summary: dict[str, Any] | None) -> str | None:
    """Why ``fit`` ended, for its summary: the time budget, the step schedule, early stopping, an interrupt."""
    if not summary:
        return None
    steps, planned = summary.get("optimizer_steps"), summary.get("planned_steps")
    of = f" of {planned} planned" if planned else ""
    if summary.get("stopped_by_time_budget"):
        return (f"wall-clock budget of {summary.get('time_budget_s')} s (model.time_budget_s) used up after {steps} "
                f"optimizer steps{of}")
    if getattr(trainer, "interrupted", False):
        return f"interrupted after {steps} optimizer steps{of}"
    if planned is not None and steps == planned:
        return f"step schedule done: {steps} optimizer steps"
    for callback in trainer.callbacks:
        if type(callback).__name__ == "EarlyStopping" and getattr(callback, "stopped_epoch", 0):
            return f"EarlyStopping ({getattr(callback, 'monitor', '?')}) after {steps} optimizer steps{of}"
    return f"after {steps} optimizer steps{of}"

class InfraArgumentParser(LightningArgumentParser):
    """Parser errors as a short message (``INFRA_PL_DEBUG=1``: jsonargparse's full output)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_requested():
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"infra-pl: error: {condense_parser_error(message)}\n"
                         f"(`{prog} --help` lists the options; INFRA_PL_DEBUG=1 shows the parser's full message)\n")
        self.exit(2)

class InfraCLI(LightningCLI):
    """LightningCLI with infra-pl's model, data and trainer classes as defaults."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "attribute": {"model", "datamodule"}, "check": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--threads",
            type=int | None,
            default=None,
            help="torch CPU threads (default: INFRA_PL_THREADS/OMP_NUM_THREADS, else 1 for fit/validate: "
                 "the weights depend on the thread count, not on load; attribute: the cores not busy)",
        )
        parser.add_argument(
            "--print_plan",
            type=bool,
            default=False,
            help="attribute only: print the memory planner's per-phase estimate for this model, batch size and "
                 "max_length (and the partition plan when EKFACFactors.device_budget is set or a GPU is used), "
                 "then exit without attributing",
        )

    def instantiate_classes(self) -> None:
        # A refused option value surfaces from deep inside jsonargparse's union handling: report the
        # class and its own check instead (infra_pl.errors).
        if debug_requested():
            return super().instantiate_classes()
        try:
            super().instantiate_classes()
        except known_errors():
            raise
        except (ValueError, TypeError) as err:
            raise config_error(err) from err

    def _subcommand_config(self) -> Any:
        return self.config.get(self.subcommand, self.config) if self.subcommand else self.config

    def _parse_ckpt_path(self) -> None:
        """The checkpoint's hyperparameters fill what the config leaves unset, and never override silently.

        Lightning's own version lays every stored hyperparameter over the parsed config. Here each key
        is decided on its own (:func:`infra_pl.run_settings.merge_checkpoint_hparams`): unset settings
        come from the checkpoint, a differing architecture is refused naming each key, and any other
        given setting is kept with a line naming the key and both values.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        import torch

        from infra_pl.run_settings import conflict_message, merge_checkpoint_hparams

        try:  # mmap: only the hyperparameters are read, not gigabytes of weights
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True)
        except RuntimeError:
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        stored = dict(ckpt.get("hyper_parameters") or {})
        del ckpt
        stored.pop("_instantiator", None)
        if not stored:
            return
        if "_class_path" in stored:  # a model given by class_path: Lightning's merge
            return super()._parse_ckpt_path()
        given = self.config[subcommand].get("model")
        given = given.as_dict() if hasattr(given, "as_dict") else dict(given or {})
        defaults = self._subcommand_parsers[subcommand].get_defaults().get("model")
        defaults = defaults.as_dict() if hasattr(defaults, "as_dict") else dict(defaults or {})
        merge = merge_checkpoint_hparams(stored, given, defaults, subcommand)
        if merge.conflicts:
            raise ConfigError(conflict_message(str(ckpt_path), merge.conflicts))
        for line in merge.notices:
            print(f"[infra-pl] warning: {line}", file=sys.stderr)
        if merge.ignored:
            owner = getattr(self.model_class, "__name__", "the model")
            print(f"[infra-pl] warning: the checkpoint's hyperparameter(s) {', '.join(merge.ignored)} are no option of "
                  f"{owner} in this version; ignored", file=sys.stderr)
        if merge.take:
            try:
                self.config = self.parser.parse_object({subcommand: {"model": merge.take}}, self.config)
            except SystemExit:
                sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
                raise

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        expand_root_placeholder(config)
        if config.get("print_plan") and self.subcommand != "attribute":
            raise ValueError(f"--print_plan applies to `attribute`, not `{self.subcommand}`")
        _, lines = configure_for_subcommand(self.subcommand, config.get("threads"))
        print("\n".join(lines), file=sys.stderr)

    def before_fit(self) -> None:
        last_checkpoint_without_version(self.trainer)

    def after_fit(self) -> None:
        trainer = self.trainer
        print("\n[infra-pl] fit finished")
        if trainer.logger is not None:
            print(f"  TensorBoard logs : {trainer.logger.log_dir}   (tensorboard --logdir {Path(trainer.logger.log_dir).parent})")
        ckpt = _checkpoint_path(trainer)
        if ckpt:
            print(f"  checkpoint       : {ckpt}")
        reason = fit_stop_reason(trainer, getattr(self.model, "fit_summary", None))
        if reason:
            print(f"  stopped          : {reason}")

    def after_validate(self) -> None:
        trainer, model = self.trainer, self.model
        print("\n[infra-pl] validate finished")
        if trainer.logger is not None:
            print(f"  TensorBoard logs : {trainer.logger.log_dir}")
        if getattr(trainer, "loaded_checkpoint", None):
            print(f"  checkpoint       : {trainer.loaded_checkpoint}")
        verdicts = getattr(model, "_verdicts", [])
        if verdicts:
            print("  greedy generation, correct per domain and difficulty level:")
            print(correctness_table(verdicts))
        if getattr(model, "last_correctness_path", None):
            print(f"  correctness file : {model.last_correctness_path}")


    def before_attribute(self) -> None:
        if self._subcommand_config().get("print_plan"):
            print(memory_plan_text(self.trainer, self.model, self.datamodule))
            raise SystemExit(0)

    def after_attribute(self) -> None:
        state = self.trainer.attribution_state
        print("\n[infra-pl] attribute finished")
        if getattr(self.trainer, "loaded_checkpoint", None):
            print(f"  checkpoint       : {self.trainer.loaded_checkpoint}")
        scores, report = state.scores, state.report
        for label, path in (("EK-FAC factors", state.factors and state.factors.factors_dir),
                            ("instance scores", scores and scores.instance_scores_path),
                            ("token scores", scores and scores.token_scores_path),
                            ("sentence scores", scores and scores.sentence_scores_path),
                            ("report", report and report.html_path)):
            if path:
                print(f"  {label:<16} : {path}")


def memory_plan_text(trainer: L.Trainer, module: L.LightningModule, datamodule: Any) -> str:
    """The planner's table for the configured attribution run (``attribute --print_plan``).

    Builds the network if the module has not yet (``configure_model``) but loads no checkpoint:
    memory depends on shapes and dtypes, not on weight values.
    """
    from infra_pl.callbacks import EKFACFactors, InfluenceScores
    from infra_pl.planner import PartitionError, plan_partitions, plan_table
    from infra_pl.protocol import attribution_model, model_is_built

    factors = next((c for c in trainer.callbacks if isinstance(c, EKFACFactors)), None)
    if factors is None:
        raise ValueError("--print_plan needs an EKFACFactors callback in trainer.callbacks (it sets modules, dtype, "
                         "batch size and the device budget)")
    if not model_is_built(module) and hasattr(module, "configure_model"):
        # What `attribute` does before its first pass: the data (SFTModule takes its tokenizer from
        # it), then the network.
        for hook, arg in (("prepare_data", ()), ("setup", ("predict",))):
            if callable(getattr(datamodule, hook, None)):
                getattr(datamodule, hook)(*arg)
        if isinstance(datamodule, L.LightningDataModule):
            trainer.datamodule = datamodule
            datamodule.trainer = trainer
        module.trainer = trainer
        module.configure_model()
    model = attribution_model(module)
    scores = next((c for c in trainer.callbacks if isinstance(c, InfluenceScores)), None)
    # Measurements are built per evaluation domain at run time (the default: one per domain), so
    # count domains x measurement objects; the table's header shows the number assumed.
    domains = {ex.get("domain") for ex in getattr(datamodule, "eval_examples", None) or []} - {None}
    measurements = max(1, (len(scores.measurements) if scores is not None else 1) * max(1, len(domains)))
    est = factors.memory_estimate(model, datamodule, measurements=measurements)
    # The network is still on the CPU here; the device the run will use is the strategy's.
    budget = factors.options.budget_bytes(trainer.strategy.root_device)
    if budget is None:
        return plan_table(est, None) + (
            "\n\n(no partition plan: the run is not on a GPU and EKFACFactors has no device_budget; set "
            "`device_budget: 80GiB` under its init_args in the YAML to plan partitions for that budget)"
        )
    try:
        plan = plan_partitions(est, budget)
    except PartitionError as err:
        return plan_table(est, None) + f"\n\nerror: {err}"
    return plan_table(est, plan, budget)


ATTRIBUTION_CALLBACKS = ("EKFACFactors", "InfluenceScores", "AttributionReport")


def attribute_help() -> str:
    """The description of ``infra-pl attribute --help``: where the attribution options are, and their names.

    They are the init_args of the attribution callbacks in ``trainer.callbacks``, which
    LightningCLI's own help lists only as "a callback or list of callbacks".
    """
    import inspect

    from infra_pl import callbacks

    lines = [
        "Fit (or reuse) EK-FAC factors and compute influence scores with the attribution callbacks.",
        "",
        "The attribution options are the init_args of these callbacks in trainer.callbacks (set them in the YAML,",
        "as configs/demo.yaml does; --print_config shows the values in force, --print_plan true the memory plan).",
        "Each command below prints one callback's options with their documentation:",
    ]
    for name in ATTRIBUTION_CALLBACKS:
        cls = getattr(callbacks, name)
        options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        lines.append(f"  infra-pl attribute --trainer.callbacks.help infra_pl.callbacks.{name}")
        lines.extend(_wrapped(", ".join(options), indent=6))
    return "\n".join(lines)


def _wrapped(text: str, indent: int, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, initial_indent=" " * indent, subsequent_indent=" " * indent)


class _KeepLines(DefaultHelpFormatter):
    """Descriptions keep their line breaks (the option list of ``attribute --help``)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def run_cli(args: list[str] | None = None) -> InfraCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    argv = sys.argv[1:] if args is None else list(args)
    parser_kwargs: dict[str, Any] = {"description": "infra-pl: SFT on math/code reasoning data + influence attribution.",
                                     "prog": "infra-pl"}
    if argv[:1] == ["attribute"] and any(a in ("-h", "--help") for a in argv[1:]):
        # (jsonargparse gives subcommand parsers the main parser's formatter)
        parser_kwargs.update(formatter_class=_KeepLines, attribute={"description": attribute_help()})
    return InfraCLI(
        SFTModule,
        ReasoningDataModule,
        trainer_class=InfraTrainer,
        parser_class=InfraArgumentParser,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
        args=args,
    )
