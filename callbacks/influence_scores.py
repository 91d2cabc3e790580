"""``InfluenceScores``: measurement directions, instance, token and sentence scores.

Steps (each a dedicated pass or a small direct computation; the math is ``infra_pl.influence``):
1. The measurements f (``infra_pl.measurements``; default: mean log-likelihood over D_correct per
   evaluation domain, from the correctness file of ``validate``, Eq. 6).
2. Measurement pass per measurement: ∇f, preconditioned once: v = H⁻¹∇f.
3. Instance pass over the training set: S(z) = vᵀ∇log p(z) for every example and measurement,
   written to Parquet parts as it goes (an interrupted pass resumes where it stopped).
4. Token pass for the top-K examples per measurement: s_t by forward-mode JVP (Eq. 9); Σ_t s_t = S(z).
5. Sentence scores for the top examples: S(z) − S(z without sentence y), re-scored (Eq. 7), beside
   the cheap token-sum over the sentence (labelled as an approximation).
Then every callback's ``on_scores_ready(trainer, pl_module, ScoresReady)`` is called.

What each step needs from the module and datamodule is ``infra_pl.protocol``; missing pieces are
reported by name before any pass runs.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch

from infra_pl.allocator import mmap_large_buffers
from infra_pl.console import log as _log
from infra_pl.data.schema import BEHAVIOURS
from infra_pl.ekfac.precision import resolve_compute_dtype
from infra_pl.ekfac.streams import Streams, check_streams, split_batch
from infra_pl.hooks import ScoresReady, dispatch
from infra_pl.influence.measurement import Directions
from infra_pl.measurements import CorrectAnswerLogLikelihood, Measurement, MeasurementContext, MeasurementSpec, build_specs
from infra_pl.protocol import (
    ProtocolError,
    attribution_model,
    batch_indices,
    logits_fn_for,
    loss_fn_for,
    require_data,
    require_module,
    weighted_loss_fn,
)
from infra_pl.scores_store import PartWriter, done_indices, read_parts, write_table
from infra_pl.trainer import AttributionStep

MEASURE, INSTANCE, TOKENS = "influence/measure", "influence/instance", "influence/tokens"



class InfluenceScores(AttributionStep):
    """Influence of every training example on the measurements, plus token/sentence detail.

    Args:
        measurements: the measurement objects (``infra_pl.measurements``, ``class_path``/``init_args``
            in YAML); default: one :class:`~infra_pl.measurements.CorrectAnswerLogLikelihood`
            configured by the five arguments below (the paper's D_correct measurement).
        n_correct: size of D_correct per evaluation domain (random correct items; all if fewer).
        min_correct: below this many correct items a domain stops the run (unless ``fallback``).
        fallback: ``reference`` measures on the reference answers of all evaluation items when a
            domain has too few correct ones; every output then carries that label.
        correctness_file: per-example correctness from ``validate`` (default: the newest
            ``correctness.jsonl`` under the run folder; if none exists, validation runs first).
        seed: seed of the D_correct draw.
        batch_size: batch size of the scoring passes (default: the datamodule's eval batch size).
        token_top_k: token scores for the top-K examples of each training domain per measurement
            (by instance score), so math and code traces can be compared (Finding 4) even when one
            domain dominates the top; 0 turns token scores off (then the module needs no
            ``attribution_logits``).
        token_all: token scores for every training example instead of the top-K.
        sentence_top_k: sentence scores for the top examples per measurement (0: off).
        pairwise: also write per-query scores (every measured item x every training example) to
            ``pairwise_scores.parquet``, for analyses beyond the mean measurement.
        output_dir: where scores go (default: ``<default_root_dir>/attribution/scores``).
        streams: CPU only: split every instance-score and pairwise-query batch into this many parts
            that run at once, each on threads ÷ streams cores, at least one
            (``infra_pl.ekfac.streams``); the same scores, sooner on small models. Token scores
            run as one stream (their forward-mode pass already keeps the cores busy). Refused on
            a GPU.
        pairwise_dtype: dtype of the per-query directions of ``pairwise`` and of the products of
            their training pass: ``float32`` or ``bfloat16`` (half the memory of Q directions, and
            faster on hardware with bfloat16 matrix units; scores are summed in float32;
            ``infra_pl.ekfac.precision``). The measurement directions stay float32, so token
            scores still sum to the instance scores they are checked against.
        target: the correct answer y_i of Eq. 6 that the default measurement teacher-forces:
            ``generated`` (the model's own correct generation), ``reference`` (the dataset's
            solution; refused where it is a stand-in) or ``auto`` (generated for long-CoT training
            data and for items without a full reference solution). See
            :class:`~infra_pl.measurements.CorrectAnswerLogLikelihood`.
        tagger: who labels the cognitive behaviours of every training trace (instance columns
            ``behaviour_*`` and sentence labels): ``rules`` (:data:`infra_pl.data.behaviours.RULES`),
            an :class:`~infra_pl.data.llm_judge.LLMJudgeTagger` (the paper's judge; ``class_path``
            in YAML), ``none`` (no behaviour analyses) or ``auto`` (rules when the datamodule gives
            chat examples through ``attribution_example``, else none, said in the log and report).
            Tagged once per trace, on the whole trace, and cached under the scores folder.
        tag_workers: processes for rule tagging (~0.1 s per long trace).
        removal_top_k: paper Table 2: per measurement and behaviour, the top-K examples that show
            the behaviour are scored with all of its sentences removed at once (0: off).
    """

    order = 20

    def __init__(
        self,
        measurements: list[Measurement] | None = None,
        n_correct: int = 100,
        min_correct: int = 10,
        fallback: str | None = None,
        correctness_file: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        token_top_k: int = 100,
        token_all: bool = False,
        sentence_top_k: int = 10,
        pairwise: bool = False,
        output_dir: str | None = None,
        streams: int = 1,
        pairwise_dtype: str = "float32",
        target: str = "auto",
        tagger: Any = "auto",
        tag_workers: int = 1,
        removal_top_k: int = 20,
    ) -> None:
        check_streams(streams)
        from infra_pl.data.tagging import resolve_tagger

        self.tagger = tagger if tagger == "auto" else resolve_tagger(tagger)
        self.pairwise_dtype = resolve_compute_dtype(pairwise_dtype)
        if fallback not in (None, "reference"):
            raise ValueError(f"fallback must be null or 'reference', got {fallback!r}")
        self.measurements: list[Measurement] = list(measurements) if measurements else [
            CorrectAnswerLogLikelihood(n=n_correct, min_correct=min_correct, fallback=fallback,
                                       correctness_file=correctness_file, seed=seed, target=target)
        ]
        self.target = target
        self.tag_workers = tag_workers
        self.removal_top_k = removal_top_k
        self.n_correct = n_correct
        self.min_correct = min_correct
        self.fallback = fallback
        self.correctness_file = correctness_file
        self.seed = seed
        self.batch_size = batch_size
        self.token_top_k = token_top_k
        self.token_all = token_all
        self.sentence_top_k = sentence_top_k
        self.pairwise = pairwise
        self.output_dir = output_dir
        self.streams = streams
        self._phase_data: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _model(pl_module: L.LightningModule) -> torch.nn.Module:
        return attribution_model(pl_module)

    @staticmethod
    def _tracked(model: torch.nn.Module, factors: Any) -> dict[str, torch.nn.Module]:
        named = dict(model.named_modules())
        return {name: named[name] for name in factors.modules}

    @property
    def _wants_tokens(self) -> bool:
        return self.token_all or self.token_top_k > 0

    def check_requirements(self, pl_module: Any, datamodule: Any) -> None:
        """Fail before any pass when a requested product lacks a protocol method (named in the error)."""
        require_module(pl_module, ["attribution_model", "per_example_loss"], "InfluenceScores")
        require_data(datamodule, ["attribution_ids", "attribution_dataloader"], "InfluenceScores")
        check_streams(self.streams, getattr(pl_module, "device", None))
        if self._wants_tokens:
            require_module(pl_module, ["attribution_logits"], "InfluenceScores token scores",
                           "Or set token_top_k: 0 on InfluenceScores.")
        if self.sentence_top_k > 0:
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
        context = MeasurementContext(trainer, pl_module, datamodule, self.batch_size)
        for measurement in self.measurements:
            check = getattr(measurement, "preflight", None)
            if callable(check):
                check(context)
        out = Path(self.output_dir) if self.output_dir else trainer.attribution_dir() / "scores"
        self._tagged = (self._tag_training_set(trainer, datamodule, out, len(datamodule.attribution_ids("train"))),)

    def run_attribution(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        self.check_requirements(pl_module, datamodule)
        factors = trainer.attribution_state["factors"]
        groups = trainer.attribution_state.get("factor_partitions") or [list(factors.modules)]
        out = Path(self.output_dir) if self.output_dir else trainer.attribution_dir() / "scores"
        model = self._model(pl_module)
        tracked = self._tracked(model, factors)
        train_ids = list(datamodule.attribution_ids("train"))
        preflighted = getattr(self, "_tagged", None)
        self._tagged = None
        tagged = preflighted[0] if preflighted is not None else self._tag_training_set(trainer, datamodule, out, len(train_ids))
        context = MeasurementContext(trainer, pl_module, datamodule, self.batch_size)
        specs = build_specs(self.measurements, context)
        info = {spec.name: dict(spec.info) for spec in specs}

        # Per module partition (one group without partitions): ∇f per measurement, v = H⁻¹∇f.
        parts = [self._group_directions(trainer, pl_module, datamodule, factors, tracked, group, specs, info) for group in groups]
        names = list(parts[0].directions.names)
        directions = Directions(names, {n: v for part in parts for n, v in part.directions.per_module.items()})
        key = _directions_key(directions, factors)

        # Instance scores, resumable; with partitions, the sum of every group's additive share.
        scored = _sum_frames([
            self._score_training_set(trainer, pl_module, datamodule, part.tracked, part.directions,
                                     out / "instance_parts" / part.suffix, part.key, "instance" + part.label)
            for part in parts
        ])
        instance_df = _with_behaviours(_instance_table(datamodule, train_ids, scored, names), tagged, self.tagger)
        instance_df.attrs["tagger_agreement"] = getattr(self, "_agreement", None)
        meta = {"measurements": info, "sign": "positive = up-weighting the example raises f", "directions_key": key,
                "module_partitions": len(parts)}
        if trainer.is_global_zero:
            path = write_table(out / "instance_scores.parquet", instance_df, meta)
            trainer.attribution_state["instance_scores_path"] = path
            (out / "measurement_info.json").write_text(json.dumps(info, indent=2))
        trainer.attribution_state.update({"instance_scores": instance_df, "measurement_info": info, "directions": directions})
        if self.pairwise:
            self._pairwise(trainer, pl_module, datamodule, parts, factors, specs, out, meta)

        # Token scores for the top-K examples per measurement (or all), one pass per partition.
        if self._wants_tokens:
            if self.token_all:
                top = list(range(len(train_ids)))
            else:
                groups = [g for _, g in instance_df.groupby("domain")] if "domain" in instance_df else [instance_df]
                top = sorted({int(i) for n in names for g in groups for i in g.nlargest(self.token_top_k, f"score_{n}")["index"]})
            token_df = _sum_token_frames([self._token_pass(trainer, pl_module, datamodule, part, out, top, train_ids) for part in parts])
            _check_token_sums(token_df, instance_df, names)
            if trainer.is_global_zero:
                trainer.attribution_state["token_scores_path"] = write_table(out / "token_scores.parquet", token_df, meta)
            trainer.attribution_state["token_scores"] = token_df

        # Sentence scores for the top examples (rank 0, direct: a small set), summed over partitions.
        if trainer.is_global_zero and self.sentence_top_k > 0:
            frames = [self._sentence_scores(pl_module, datamodule, part.tracked, part.directions, instance_df, names, tagged)
                      for part in parts]
            sentence_df = frames[0].copy()
            for column in ("score_removal", "score_token_sum"):
                if column in sentence_df:
                    sentence_df[column] = sum(frame[column].to_numpy() for frame in frames)
            trainer.attribution_state["sentence_scores"] = sentence_df
            trainer.attribution_state["sentence_scores_path"] = write_table(out / "sentence_scores.parquet", sentence_df, meta)
        if trainer.is_global_zero and self.removal_top_k > 0:  # Table 2: behaviours removed from the top examples showing them
            removals = [self._behaviour_removal(pl_module, datamodule, part.tracked, part.directions, instance_df, names, tagged)
                        for part in parts]
            removal_df = removals[0].copy()
            for column in ("score_full", "score_without", "score_removal_joint", "score_removal_additive"):
                if column in removal_df:
                    removal_df[column] = sum(removal[column].to_numpy() for removal in removals)
            trainer.attribution_state["behaviour_removal"] = removal_df
            if len(removal_df):
                trainer.attribution_state["behaviour_removal_path"] = write_table(out / "behaviour_removal.parquet", removal_df, meta)
        trainer.attribution_state["scores_dir"] = out
        state = trainer.attribution_state
        state["scores_ready"] = ScoresReady(
            scores_dir=out, measurements=names, instance_scores=instance_df, measurement_info=info,
            instance_scores_path=state.get("instance_scores_path"), token_scores=state.get("token_scores"),
            token_scores_path=state.get("token_scores_path"), sentence_scores=state.get("sentence_scores"),
            sentence_scores_path=state.get("sentence_scores_path"), pairwise_scores_path=state.get("pairwise_scores_path"),
            behaviour_removal=state.get("behaviour_removal"), behaviour_removal_path=state.get("behaviour_removal_path"),
        )
        dispatch(trainer, pl_module, state["scores_ready"])

    def _tag_training_set(self, trainer: Any, datamodule: Any, out: Path, n_train: int) -> list[Any] | None:
        """Behaviour labels of every training trace (cached per trace), or None with ``tagger: none``.

        Runs before any pass, so a tagger that cannot work (an unreachable judge) fails first.
        """
        from infra_pl.data.tagging import resolve_tagger, tag_examples, tagger_name

        if self.tagger == "auto":
            readable = callable(getattr(datamodule, "attribution_example", None))
            self.tagger = resolve_tagger("rules" if readable else "none")
            if not readable:
                _log(f"behaviours: tagger 'auto' found no attribution_example on {type(datamodule).__name__} (no "
                     "traces to read), so no behaviour analyses; set tagger: rules with a datamodule that has it")
        if self.tagger is None:
            _log("behaviours: no tagger, so no behaviour columns and no sentence behaviour labels")
            return None

        if not callable(getattr(datamodule, "attribution_example", None)):
            raise ProtocolError(f"InfluenceScores tagger '{tagger_name(self.tagger)}' reads the training traces through "
                                "the datamodule's attribution_example(split, index); set tagger: none without it")
        examples = [datamodule.attribution_example("train", i) for i in range(n_train)]
        name = tagger_name(self.tagger).replace("/", "_").replace(":", "_")
        cache = out / "behaviour_tags" / f"{name}.jsonl" if trainer.is_global_zero else None
        tagged = tag_examples(examples, self.tagger, cache, workers=self.tag_workers)
        self._agreement = None
        if tagger_name(self.tagger) != "rules":  # a judge (or own tagger): measure its agreement with the rules
            from infra_pl.data.tagging import agreement

            rules = resolve_tagger("rules")
            rules_cache = out / "behaviour_tags" / "rules.jsonl" if trainer.is_global_zero else None
            self._agreement = agreement(tagged, tag_examples(examples, rules, rules_cache, workers=self.tag_workers))
            _log(f"behaviours: agreement of '{tagger_name(self.tagger)}' with the rules (Cohen's kappa per sentence): "
                 + ", ".join(f"{b} {k:.2f}" for b, k in self._agreement.items()))
        totals = {b: sum(1 for t in tagged if t.counts()[b] > 0) for b in BEHAVIOURS}
        _log(f"behaviours ({tagger_name(self.tagger)}): traces showing each behaviour of {len(tagged)}: "
             + ", ".join(f"{b} {n}" for b, n in totals.items()))
        if not any(totals.values()):
            raise ValueError(
                f"the behaviour tagger '{tagger_name(self.tagger)}' found no behaviour in any of the {len(tagged)} "
                "training traces, so every behaviour table would be empty. Check the tagger on a few traces "
                "(infra_pl.data.behaviours.tag_sentences), choose another (LLMJudgeTagger), or set tagger: none"
            )
        return tagged

    def _group_directions(self, trainer, pl_module, datamodule, factors, tracked, group: list[str],
                          specs: list[MeasurementSpec], info: dict[str, dict[str, Any]]) -> "_Partition":
        """v = H⁻¹∇f of every measurement on one group of modules.

        Every rank runs the measurement pass over its shard of the measurement data (sums reduced
        once); rank 0 alone preconditions and broadcasts v, so only one rank touches the factors.
        """
        from infra_pl.influence import measurement_directions

        sub = {n: tracked[n] for n in group}
        gradients = {}
        for spec in specs:
            gradients[spec.name], info[spec.name]["f_value"] = self._measurement_gradient(trainer, pl_module, datamodule, sub, spec)
        directions = None
        if trainer.is_global_zero:
            group_factors = factors.subset(group).to(pl_module.device, covariances=False)
            directions = measurement_directions(group_factors, gradients)
            del group_factors
        if trainer.world_size > 1:
            directions = trainer.strategy.broadcast(directions, src=0)
        groups = [list(g) for g in trainer.attribution_state.get("factor_partitions") or [group]]
        k = groups.index(list(group))
        partitioned = len(groups) > 1
        return _Partition(
            group=list(group), tracked=sub, directions=directions.to("cpu"), key=_directions_key(directions, factors),
            suffix=f"partition-{k:03d}" if partitioned else "", label=f" [partition {k + 1}/{len(groups)}]" if partitioned else "",
        )

    def _token_pass(self, trainer, pl_module, datamodule, part: "_Partition", out: Path, top: list[int], train_ids: list[str]) -> pd.DataFrame:
        """Token scores of the ``top`` examples for one group; every rank writes its own Parquet shard."""
        parts_dir = out / "token_parts" / part.suffix
        key = part.key + ":" + _indices_key(top)
        done = done_indices(parts_dir, key)
        todo = [i for i in top if i not in done]
        if done:
            _log(f"token scores{part.label}: resuming, {len(done)} of {len(top)} examples already scored")
        if todo:
            self._phase_data = {"tracked": part.tracked, "directions": part.directions.to(pl_module.device),
                                "names": list(part.directions.names), "tokenizer": getattr(datamodule, "tokenizer", None),
                                "ids": train_ids, "logits_fn": logits_fn_for(pl_module),
                                "writer": PartWriter(parts_dir, key, rank=trainer.global_rank)}
            # The forward-mode token pass fragments glibc's heap; its large buffers get their own
            # mappings instead (infra_pl.allocator.mmap_large_buffers; measured there).
            with mmap_large_buffers():
                trainer.run_attribution_pass(TOKENS, pl_module, datamodule, split="train", batch_size=self.batch_size,
                                             indices=todo)
        trainer.strategy.barrier()
        table = read_parts(parts_dir, key)
        return pd.DataFrame() if table is None else table.to_pandas()

    def _measurement_gradient(self, trainer, pl_module, datamodule, tracked, spec: MeasurementSpec) -> tuple[dict[str, torch.Tensor], float]:
        """∇f and f of one measurement from a dedicated pass over its batches.

        Unweighted batches: f = mean log p over the sequences (the paper's form). Batches with
        ``measurement_weight``: f = Σ w_i log p_i (the weights carry any normalisation).
        """
        self._phase_data = {"tracked": tracked, "sum": None, "count": 0, "f_sum": 0.0, "weighted": None,
                            "loss_fn": weighted_loss_fn(loss_fn_for(pl_module))}
        trainer.run_attribution_pass(MEASURE, pl_module, datamodule, loader=spec.loader)
        data = self._phase_data
        if data["sum"] is None:
            raise ValueError(f"measurement {spec.name!r} has no sequences on this rank (an empty loader?)")
        if data["weighted"]:
            return data["sum"], data["f_sum"]
        count = data["count"]
        return {k: v / count for k, v in data["sum"].items()}, data["f_sum"] / count

    def _score_training_set(self, trainer, pl_module, datamodule, tracked, directions, parts: Path, key: str, what: str) -> pd.DataFrame:
        """Scores of every training example for ``directions`` (columns ``score_<name>``), resumable."""
        all_indices = list(range(len(datamodule.attribution_ids("train"))))
        done = done_indices(parts, key)
        todo = [i for i in all_indices if i not in done]
        if done:
            _log(f"{what} scores: resuming, {len(done)} of {len(all_indices)} already scored")
        if todo:
            self._phase_data = {
                "tracked": tracked,
                "directions": directions.to(pl_module.device),
                "writer": PartWriter(parts, key, rank=trainer.global_rank),
                "names": list(directions.names),
                "loss_fn": loss_fn_for(pl_module),
                "ids": list(datamodule.attribution_ids("train")),
                "pool": Streams(self.streams, lambda: None) if self.streams > 1 else None,
                "in_flight": deque(),
            }
            trainer.run_attribution_pass(INSTANCE, pl_module, datamodule, split="train", batch_size=self.batch_size, indices=todo)
            trainer.strategy.barrier()
        table = read_parts(parts, key)
        if table is None:
            raise ValueError(f"{what} scores: the training loader yielded no batches (is attribution_dataloader('train') empty?)")
        return table.to_pandas().drop_duplicates("index").set_index("index").sort_index()

    def _pairwise(self, trainer, pl_module, datamodule, parts: list["_Partition"], factors, specs: list[MeasurementSpec], out: Path, meta: dict[str, Any]) -> None:
        """Per-query scores (n_query x n_train) for the measured items, in long format.

        Queries are the datamodule items the measurements are defined on (``spec.split`` and
        ``spec.indices``; for the default, the D_correct items of every domain).
        """
        from infra_pl.influence import query_directions

        itemised = [s for s in specs if s.indices is not None and s.split is not None]
        splits = {s.split for s in itemised}
        if not itemised or len(splits) > 1:
            _log("pairwise scores: skipped, they need measurements over items of one datamodule split "
                 f"(got {sorted(splits) or 'none'})")
            return
        split = splits.pop()
        query_ids = list(datamodule.attribution_ids(split))
        query_meta = list(datamodule.attribution_metadata(split)) if callable(getattr(datamodule, "attribution_metadata", None)) else None
        train_ids = list(datamodule.attribution_ids("train"))
        # The measurements' own sequences (their targets may be the model's generations, not the
        # datamodule's references), so per-query scores average to the instance scores.
        loader = [batch for s in itemised for batch in s.loader]
        order = [i for batch in loader for i in batch_indices(batch, "pairwise scores")]  # query_k = k-th item in loader order
        if len(set(order)) != len(order):
            _log("pairwise scores: skipped, an item belongs to more than one measurement")
            return
        frames = []
        for part in parts:  # the additive share of every module group (one group without partitions)
            group_factors = factors.subset(part.group).to(pl_module.device, covariances=False)
            directions = query_directions(self._model(pl_module), loader, group_factors, part.tracked,
                                          loss_fn=loss_fn_for(pl_module), streams=self.streams,
                                          dtype=self.pairwise_dtype)
            del group_factors
            key = _directions_key(directions, factors)
            frames.append(self._score_training_set(trainer, pl_module, datamodule, part.tracked, directions,
                                                   out / "pairwise_parts" / part.suffix, key, "pairwise" + part.label))
        scored = _sum_frames(frames)
        rows = []
        for k, query_index in enumerate(order):
            domain = query_meta[query_index].get("domain") if query_meta is not None else None
            column = scored[f"score_query_{k}"]
            for train_index, value in column.items():
                rows.append({"query_id": query_ids[query_index], "query_domain": domain,
                             "train_id": train_ids[int(train_index)], "score": float(value)})
        if trainer.is_global_zero:
            path = write_table(out / "pairwise_scores.parquet", pd.DataFrame(rows), meta)
            trainer.attribution_state["pairwise_scores_path"] = path
            _log(f"pairwise scores: {len(order)} queries x {len(scored)} training examples -> {path}")

    # ------------------------------------------------------------ batch plumbing
    def on_predict_batch_end(self, trainer: Any, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        phase = getattr(trainer, "attribution_phase", None)
        if phase not in (MEASURE, INSTANCE, TOKENS):
            return
        from infra_pl.influence import instance_scores, measurement_gradient

        model = self._model(pl_module)
        with torch.enable_grad():
            if phase == MEASURE:
                self._measure_batch(model, batch, measurement_gradient)
            elif phase == INSTANCE:
                self._score_batch(model, batch, instance_scores)
            else:
                self._token_rows(model, batch)

    def _score_batch(self, model: torch.nn.Module, batch: Any, instance_scores: Any) -> None:
        """Instance scores of one batch; with streams, its halves are queued and written once done.

        With several streams the halves of consecutive batches flow through the stream workers
        without waiting for each batch to finish (as in ``instance_scores_over``); finished
        batches are written in loader order from this (the loop's) thread, so the score parts on
        disk are the same as with one stream.
        """
        data = self._phase_data
        indices = batch_indices(batch, "instance scores")

        def score(part: Any) -> torch.Tensor:
            return instance_scores(model, part, data["directions"], data["tracked"], loss_fn=data["loss_fn"]).detach().cpu()

        if data["pool"] is None:
            self._write_scores(indices, score(batch))
            return
        futures = [data["pool"].submit(lambda _state, part: score(part), part) for part in split_batch(batch, self.streams)]
        data["in_flight"].append((indices, futures))
        self._write_finished(wait=False)

    def _write_finished(self, wait: bool) -> None:
        """Write the queued batches whose halves are all done (all of them with ``wait``), in order."""
        in_flight = self._phase_data["in_flight"]
        while in_flight and (wait or all(f.done() for f in in_flight[0][1])):
            indices, futures = in_flight.popleft()
            self._write_scores(indices, torch.cat([f.result() for f in futures]))

    def _write_scores(self, indices: list[int], scores: torch.Tensor) -> None:
        data = self._phase_data
        ids, names = data["ids"], data["names"]
        rows = [
            {"index": i, "id": ids[i], **{f"score_{n}": float(scores[r, m]) for m, n in enumerate(names)}}
            for r, i in enumerate(indices)
        ]
        data["writer"].add(rows)

    def _measure_batch(self, model: torch.nn.Module, batch: Any, measurement_gradient: Any) -> None:
        """Add Σ_i w_i ∇log p_i (w_i = 1 for unweighted batches) and Σ_i w_i log p_i of one batch."""
        data = self._phase_data
        weighted = "measurement_weight" in batch
        if data["weighted"] is None:
            data["weighted"] = weighted
        elif data["weighted"] != weighted:
            raise ValueError("a measurement's batches must all carry 'measurement_weight' or none of them")
        size = int(batch["input_ids"].shape[0])
        grad = measurement_gradient(model, [batch], data["tracked"], loss_fn=data["loss_fn"])
        summed = {k: v * size for k, v in grad.items()}
        data["sum"] = summed if data["sum"] is None else {k: data["sum"][k] + v for k, v in summed.items()}
        data["count"] += size
        with torch.no_grad():
            data["f_sum"] += float(-data["loss_fn"](model, batch, False).sum())

    def on_exception(self, trainer: Any, pl_module: L.LightningModule, exception: BaseException) -> None:
        pool = self._phase_data.get("pool") if isinstance(self._phase_data, dict) else None
        if pool is not None:  # an interrupted instance pass: drop the queued halves (written parts stay)
            pool.close(wait=False)
            self._phase_data["in_flight"].clear()

    def on_predict_end(self, trainer: Any, pl_module: L.LightningModule) -> None:
        phase = getattr(trainer, "attribution_phase", None)
        if phase == INSTANCE and self._phase_data.get("pool") is not None:
            self._write_finished(wait=True)
            self._phase_data["pool"].close()
        if phase in (INSTANCE, TOKENS):
            self._phase_data["writer"].flush()
        elif phase == MEASURE and trainer.world_size > 1:
            data = self._phase_data
            for value in data["sum"].values():
                value.copy_(trainer.strategy.reduce(value.clone(), reduce_op="sum"))
            count = torch.tensor([data["count"], data["f_sum"]], dtype=torch.float64, device=pl_module.device)
            count = trainer.strategy.reduce(count, reduce_op="sum")
            data["count"], data["f_sum"] = int(count[0]), float(count[1])

    def _token_rows(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
        from infra_pl.influence import token_scores

        data = self._phase_data
        indices = batch_indices(batch, "token scores")
        scores = token_scores(model, batch, data["directions"], data["tracked"], logits_fn=data["logits_fn"]).detach().cpu()  # [M, B, T-1]
        targets = batch["labels"][:, 1:].cpu()
        tokenizer = data["tokenizer"]
        rows = []
        for row, index in enumerate(indices):
            example_id = data["ids"][index]
            positions = (targets[row] != -100).nonzero().flatten().tolist()
            pieces = [tokenizer.decode([int(targets[row, p])]) if tokenizer is not None else str(int(targets[row, p])) for p in positions]
            for m, name in enumerate(data["names"]):
                for p, piece in zip(positions, pieces):
                    rows.append(
                        {"id": example_id, "index": index, "measurement": name, "position": p, "token": piece, "score": float(scores[m, row, p])}
                    )
        data["writer"].add(rows)

    # ----------------------------------------------------------------- sentences
    def _sentence_scores(self, pl_module, datamodule, tracked, directions, instance_df, names, tagged) -> pd.DataFrame:
        """Eq. 7 rows for the top examples; behaviour labels from the whole-trace tags (by offsets).

        Sentences wholly past the ``max_length`` cut are not scored (they never reached the model);
        their count per example goes to ``attrs["sentences_past_cut"]`` of the returned frame.
        """
        from infra_pl.data.sentences import split_sentences
        from infra_pl.data.tagging import sentence_labels
        from infra_pl.influence import sentence_scores

        model = self._model(pl_module)
        dirs = directions.to(pl_module.device)
        loss_fn, logits_fn = loss_fn_for(pl_module), logits_fn_for(pl_module)
        ids = list(datamodule.attribution_ids("train"))
        chosen: dict[int, list[str]] = {}
        for name in names:
            for index in instance_df.nlargest(self.sentence_top_k, f"score_{name}")["index"]:
                chosen.setdefault(int(index), []).append(name)
        rows = []
        past_cut: dict[str, int] = {}
        for index, measured in chosen.items():
            example = datamodule.attribution_example("train", index)
            messages = example["messages"]
            turn = max(i for i, msg in enumerate(messages) if msg["role"] == "assistant")
            sentences = [s for s in split_sentences(messages[turn]["content"]) if s.kind != "marker"]
            if not sentences:
                continue
            result = sentence_scores(
                model, datamodule.tokenizer, messages, sentences, dirs, tracked,
                max_length=datamodule.max_length, assistant_turn_index=turn, with_token_sum=False, loss_fn=loss_fn,
            )
            if result.n_past_cut:
                past_cut[ids[index]] = result.n_past_cut
            scored = [sentences[k] for k in result.kept]
            if not scored:
                continue
            token_sum = _token_sums(model, datamodule.tokenizer, messages, datamodule.max_length, dirs, tracked, logits_fn, result.spans)
            labels = sentence_labels(tagged[index], scored) if tagged is not None else [[] for _ in scored]
            for m, name in enumerate(names):
                for j, sentence in enumerate(scored):
                    rows.append(
                        {
                            "id": ids[index],
                            "index": index,
                            "measurement": name,
                            "top_for": ",".join(measured),
                            "sentence_index": result.kept[j],
                            "text": sentence.text,
                            "kind": sentence.kind,
                            "behaviours": labels[j],
                            "score_removal": float(result.removal[j, m]),
                            "score_token_sum": float(token_sum[j, m]),
                            "n_tokens": len(result.spans[j]),
                            "clipped": bool(result.clipped[j]),
                        }
                    )
        if past_cut:
            _log(f"sentence scores: {sum(past_cut.values())} sentence(s) of {len(past_cut)} example(s) lie wholly past "
                 f"max_length={datamodule.max_length} and are left out (never trained on)")
        frame = pd.DataFrame(rows)
        frame.attrs["sentences_past_cut"] = past_cut
        frame.attrs["tagged_by"] = _source_name(self.tagger)
        return frame

    def _behaviour_removal(self, pl_module, datamodule, tracked, directions, instance_df, names, tagged) -> pd.DataFrame:
        """Paper Table 2 (left): for each measurement and behaviour, the top ``removal_top_k`` examples
        *that show it*, scored once with all of its sentences removed (one re-tokenised
        counterfactual), beside the additive approximation (the sum of its single removals)."""
        from infra_pl.data.sentences import Sentence
        from infra_pl.influence import joint_removal_scores, sentence_scores

        if tagged is None:
            return pd.DataFrame()
        parts = {b: (b,) for b in BEHAVIOURS} | {name: tuple(p) for name, p in JOINT_SETS.items()}
        shows = {name: [all(tagged[int(i)].counts()[b] > 0 for b in members) for i in instance_df["index"]]
                 for name, members in parts.items()}
        selected: dict[int, dict[str, set[str]]] = {}
        for measurement in names:
            for name in parts:
                candidates = instance_df[shows[name]]
                for index in candidates.nlargest(self.removal_top_k, f"score_{measurement}")["index"]:
                    selected.setdefault(int(index), {}).setdefault(name, set()).add(measurement)
        model, dirs, loss_fn = self._model(pl_module), directions.to(pl_module.device), loss_fn_for(pl_module)
        ids = list(datamodule.attribution_ids("train"))
        rows = []
        for index, chosen in sorted(selected.items()):
            messages = datamodule.attribution_example("train", index)["messages"]
            turn = max(i for i, msg in enumerate(messages) if msg["role"] == "assistant")
            content = messages[turn]["content"]
            sets = {name: [Sentence(a, b, content[a:b], "text") for a, b, labels in tagged[index].spans
                           if set(parts[name]) & set(labels)] for name in chosen}
            joint = joint_removal_scores(model, datamodule.tokenizer, messages, sets, dirs, tracked,
                                         max_length=datamodule.max_length, assistant_turn_index=turn, loss_fn=loss_fn)
            singles = sorted({(s.start, s.end): s for members in sets.values() for s in members}.values(), key=lambda s: s.start)
            single = sentence_scores(model, datamodule.tokenizer, messages, singles, dirs, tracked,
                                     max_length=datamodule.max_length, assistant_turn_index=turn, with_token_sum=False,
                                     loss_fn=loss_fn)
            position = {singles[k].start: j for j, k in enumerate(single.kept)}
            for k, name in enumerate(joint.names):
                for m, measurement in enumerate(names):
                    if measurement not in chosen[name] or joint.n_sentences[k] == 0:  # all its sentences past the cut
                        continue
                    additive = sum(float(single.removal[position[s.start], m]) for s in sets[name] if s.start in position)
                    rows.append({
                        "id": ids[index], "index": index, "measurement": measurement, "removed": name,
                        "n_sentences": joint.n_sentences[k], "score_full": float(joint.full[m]),
                        "score_without": float(joint.without[k, m]), "score_removal_joint": float(joint.removal[k, m]),
                        "score_removal_additive": additive,
                    })
        _log(f"behaviour removal: {len(rows)} joint counterfactuals over {len(selected)} examples "
             f"(top {self.removal_top_k} showing each behaviour, per measurement)")
        return pd.DataFrame(rows)


def _token_sums(model, tokenizer, messages, max_length, directions, tracked, logits_fn, spans: list[list[int]]) -> torch.Tensor:
    """The cheap approximation beside Eq. 7: Σ of the Eq. 9 token scores over each sentence, [S, M].

    Computed here (not inside ``sentence_scores``) so it runs through the module's own
    ``attribution_logits``, whatever network that is.
    """
    from infra_pl.data.tokenize import collate_padded, tokenize_chat
    from infra_pl.influence import token_scores

    tokenized = tokenize_chat(tokenizer, messages, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = collate_padded([{"input_ids": tokenized.input_ids, "labels": tokenized.labels, "index": 0}], pad_id)
    per_token = token_scores(model, batch, directions, tracked, logits_fn=logits_fn)[:, 0].detach().double().cpu()  # [M, T-1]
    if not spans:
        return torch.zeros(0, len(directions), dtype=torch.float64)
    return torch.stack([per_token[:, span].sum(dim=1) for span in spans])


JOINT_SETS = {"exploration+verification": ("exploration", "verification")}  # Table 2 (left) removes both too


def _source_name(tagger: Any) -> str | None:
    from infra_pl.data.tagging import tagger_name

    return None if tagger is None else tagger_name(tagger)


def _with_behaviours(instance_df: pd.DataFrame, tagged: list[Any] | None, tagger: Any) -> pd.DataFrame:
    """The instance table with ``behaviour_*`` counts from the tagger and a ``tagged_by`` column.

    Without a tagger the columns are dropped: a column of zeros would read as "no example shows
    any behaviour", which nobody measured.
    """
    from infra_pl.data.schema import BEHAVIOURS

    frame = instance_df.drop(columns=[c for c in instance_df.columns if c.startswith("behaviour_")])
    if tagged is None:
        return frame
    counts = [tagged[int(i)].counts() for i in frame["index"]]
    for behaviour in BEHAVIOURS:
        frame[f"behaviour_{behaviour}"] = [c[behaviour] for c in counts]
    frame["tagged_by"] = _source_name(tagger)
    return frame


def _directions_key(directions: Any, factors: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(list(directions.names)).encode())
    digest.update(str(factors.model_fingerprint).encode())
    for name in sorted(directions.per_module):
        tensor = directions.per_module[name].detach().double().cpu()
        digest.update(f"{name}:{tensor.sum().item():.10e}:{tensor.abs().sum().item():.10e}".encode())
    return digest.hexdigest()[:20]


def _instance_table(datamodule: Any, train_ids: list[str], scored: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per scored training example: id, index, the datamodule's metadata columns, scores."""
    has_metadata = callable(getattr(datamodule, "attribution_metadata", None))
    metadata = list(datamodule.attribution_metadata("train")) if has_metadata else [{} for _ in train_ids]
    if len(metadata) != len(train_ids):
        raise ProtocolError(f"attribution_metadata('train') has {len(metadata)} rows for {len(train_ids)} ids")
    rows = []
    for index, example_id in enumerate(train_ids):
        if index not in scored.index:
            continue
        row = {"id": example_id, "index": index}
        row.update({k: v for k, v in metadata[index].items() if k not in row and not k.startswith("score_")})
        row.update({f"score_{n}": float(scored.at[index, f"score_{n}"]) for n in names})
        rows.append(row)
    return pd.DataFrame(rows)


def _check_token_sums(token_df: pd.DataFrame, instance_df: pd.DataFrame, names: list[str]) -> None:
    """Σ_t s_t must equal S(z); a mismatch means a bug, so it is reported loudly."""
    if token_df.empty:
        return
    sums = token_df.groupby(["index", "measurement"])["score"].sum()
    instance = instance_df.set_index("index")
    worst = 0.0
    for (index, name), total in sums.items():
        reference = instance.at[index, f"score_{name}"]
        scale = max(abs(instance[f"score_{name}"]).max(), 1e-30)
        worst = max(worst, abs(total - reference) / scale)
    _log(f"token scores: max |Σ_t s_t − S(z)| / max|S| = {worst:.2e}")
    if worst > 1e-3:
        _log("WARNING: token scores do not sum to the instance scores; please report this")


@dataclass
class _Partition:
    """One group of tracked modules with its measurement directions (all modules without partitions)."""

    group: list[str]
    tracked: dict[str, torch.nn.Module]
    directions: Directions
    key: str
    suffix: str  # sub-folder of the part files ("" without partitions, so old runs resume)
    label: str  # " [partition k/K]" in log lines


def _sum_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Sum the ``score_*`` columns of per-partition score frames indexed by example index."""
    if len(frames) == 1:
        return frames[0]
    total = frames[0].copy()
    columns = [c for c in total.columns if c.startswith("score_")]
    for frame in frames[1:]:
        if not frame.index.equals(total.index):
            raise ValueError("module partitions scored different training examples; delete the *_parts folders and rerun")
        total[columns] = total[columns].to_numpy() + frame[columns].to_numpy()
    return total


def _sum_token_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Token scores of all partitions summed per (example, measurement, position), in a stable order."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    keys = ["id", "index", "measurement", "position", "token"]
    total = pd.concat(frames).groupby(keys, sort=False, as_index=False)["score"].sum()
    return total.sort_values(["index", "measurement", "position"], kind="stable").reset_index(drop=True)


def _indices_key(indices: list[int]) -> str:
    return hashlib.sha256(json.dumps(sorted(indices)).encode()).hexdigest()[:12]
