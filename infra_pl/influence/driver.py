"""The scoring run, end to end, for any runner: directions, instance, pairwise, token, sentence scores.

Steps (the math is in this package; this module owns order, resume and partitions):

1. Per module group (all tracked modules without partitions) and measurement: a measurement pass
   gives ∇f and f; the main rank preconditions v = H⁻¹∇f with the group's factors and broadcasts it.
2. Instance pass over the training set: S(z) = vᵀ∇log p(z), written to Parquet parts as it goes (an
   interrupted pass resumes where it stopped); with partitions, the sum of every group's share.
   With ``index`` the same pass also writes the training-gradient index
   (:mod:`infra_pl.influence.index`); with ``from_index`` the index replaces the pass.
3. Optional pairwise pass: one direction per measured item.
4. Token pass for the top-K examples per training domain and measurement (Eq. 9); Σ_t s_t = S(z).
5. Sentence scores (Eq. 7) and joint behaviour removal (Table 2) for the top examples, main rank.

Passes run through a :class:`~infra_pl.runner.Runner` (in process for :func:`compute_scores`,
Lightning for the ``InfluenceScores`` callback); nothing here knows Lightning.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from infra_pl.allocator import mmap_large_buffers
from infra_pl.console import log
from infra_pl.data.training_tags import Tags
from infra_pl.ekfac.factors import Factors
from infra_pl.ekfac.fingerprint import data_fingerprint
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.ekfac.streams import Streams, split_batch
from infra_pl.influence.index import (
    IndexBasis,
    IndexMismatchError,
    IndexWriter,
    TrainingIndex,
    eigen_basis,
    factors_digest,
    index_key,
    indexed,
    remove_overlapping_groups,
    scores_and_projections,
)
from infra_pl.influence.index_check import POOR_AGREEMENT, combine, extreme_rows, fit_agreement
from infra_pl.influence.instance import instance_scores, query_directions
from infra_pl.influence.measurement import Directions, measurement_directions, measurement_gradient
from infra_pl.influence.options import ScoreOptions
from infra_pl.influence.refine import (
    FisherProduct,
    IdentityPreconditioner,
    RefineResult,
    load_refinement_state,
    refine_directions,
    refinement_key,
    save_refinement_state,
    stack_gradients,
)
from infra_pl.influence.tables import (
    check_token_sums,
    directions_key,
    indices_key,
    instance_table,
    sum_score_frames,
    sum_token_frames,
    with_behaviours,
)
from infra_pl.influence.tokens import LogitsFn, causal_lm_logits, token_scores
from infra_pl.measurements import MeasurementSpec
from infra_pl.products import ScoresReady
from infra_pl.protocol import batch_indices, weighted_loss_fn
from infra_pl.runner import InProcessRunner, Pass, Runner
from infra_pl.sampling import data_strata, sample_indices
from infra_pl.scores_store import PartWriter, done_indices, read_parts, write_table

MEASURE, INSTANCE, TOKENS = "influence/measure", "influence/instance", "influence/tokens"


@dataclass
class IndexState:
    """The index being written by one instance pass: its writer, basis (on the device) and held examples."""

    writer: IndexWriter
    basis: IndexBasis
    done: set[int]


@dataclass
class GroupDirections:
    """One group of tracked modules with its measurement directions (all modules without partitions)."""

    group: list[str]
    tracked: dict[str, nn.Module]
    directions: Directions
    key: str
    suffix: str  # sub-folder of the part files ("" without partitions, so old runs resume)
    label: str  # " [partition k/K]" in log lines


class ScoreRun:
    """One scoring run of ``model`` against ``factors`` for the measurements ``specs``.

    ``data`` implements :class:`infra_pl.protocol.AttributionData` (``attribution_example``,
    ``tokenizer`` and ``max_length`` too for sentence scores); ``partitions`` are the factor
    fit's module groups; ``output_dir`` holds the Parquet parts (resume) and the final tables.
    """

    def __init__(self, options: ScoreOptions, runner: Runner, model: nn.Module, data: Any, factors: Factors,
                 specs: list[MeasurementSpec], output_dir: Path, tags: Tags, loss_fn: LossFn = causal_lm_loss,
                 logits_fn: LogitsFn | None = causal_lm_logits, partitions: list[list[str]] | None = None) -> None:
        self.options = options
        self.runner = runner
        self.model = model
        self.data = data
        self.factors = factors
        self.specs = specs
        self.out = output_dir
        self.tags = tags
        self.loss_fn = loss_fn
        self.logits_fn = logits_fn
        self.partitions = [list(g) for g in partitions] if partitions else [list(factors.modules)]
        named = dict(model.named_modules())
        self.tracked = {name: named[name] for name in factors.modules}
        self._index: TrainingIndex | None = None  # the index scores come from (from_index)
        self._written: dict[str, object] | None = None  # what the instance pass wrote into the index (index)

    # ------------------------------------------------------------ entry point
    def run(self) -> ScoresReady:
        """Every product of the run; with ``activation_checkpointing``, all of it (passes, pairwise query
        directions, sentence re-scoring) runs with every decoder block checkpointed."""
        if not self.options.activation_checkpointing:
            return self._run()
        from infra_pl.ekfac.checkpointing import activation_checkpointing

        with activation_checkpointing(self.model):
            return self._run()

    def _run(self) -> ScoresReady:
        options, runner, out = self.options, self.runner, self.out
        train_ids = list(self.data.attribution_ids("train"))
        if options.from_index:  # before any pass: a missing or stale index stops the run at once
            self._index = self._open_index(train_ids)
        info = {spec.name: dict(spec.info) for spec in self.specs}
        parts = [self._group_directions(group, info) for group in self.partitions]
        names = list(parts[0].directions.names)
        directions = Directions(names, {n: v for part in parts for n, v in part.directions.per_module.items()})
        key = directions_key(directions, self.factors)

        scored = sum_score_frames([
            self._score_training_set(part.tracked, part.directions, out / "instance_parts" / part.suffix, part.key,
                                     "instance" + part.label, index_suffix=part.suffix)
            for part in parts
        ])
        checked: dict[str, Any] = {}
        if self._index is not None:
            groups = [(p.tracked, p.directions, p.key, p.suffix, p.label) for p in parts]
            scored, checked = self._check_index_scores(groups, scored, names, "index_check", self.options.index_exact_top)
        instance_df = with_behaviours(instance_table(self.data, train_ids, scored, names), self.tags.tagged, self.tags.tagger)
        instance_df.attrs["tagger_agreement"] = self.tags.agreement
        if self._index is not None:  # every output says where its scores come from
            instance_df["exact_score"] = scored.loc[instance_df["index"].to_numpy(), "exact_score"].to_numpy()
            scored_from = {**self._index.describe(), **checked}
            for entry in info.values():
                entry["scored_from"] = scored_from
        meta = {"measurements": info, "sign": "positive = up-weighting the example raises f", "directions_key": key,
                "module_partitions": len(parts)}
        if self._index is not None:
            meta["scored_from"] = scored_from
        elif options.index:
            meta["index"] = self._written
        paths: dict[str, Path | None] = {}
        if runner.is_main:
            paths["instance"] = write_table(out / "instance_scores.parquet", instance_df, meta)
            (out / "measurement_info.json").write_text(json.dumps(info, indent=2))
        if options.pairwise:
            paths["pairwise"] = self._pairwise(parts, meta)

        if self._index is not None and (options.wants_tokens or options.sentence_top_k > 0 or options.removal_top_k > 0):
            log("from_index: token, sentence and removal scores need the training set; not computed (score "
                "without from_index for them)")
        token_df = None
        if options.wants_tokens and self._index is None:
            token_df = sum_token_frames([self._token_pass(part, self._token_examples(instance_df, names, len(train_ids)),
                                                          train_ids) for part in parts])
            check_token_sums(token_df, instance_df, names)
            if runner.is_main:
                paths["tokens"] = write_table(out / "token_scores.parquet", token_df, meta)

        sentence_df = removal_df = None
        if runner.is_main and options.sentence_top_k > 0 and self._index is None:
            sentence_df = self._summed_detail("sentence", parts, instance_df, names, ("score_removal", "score_token_sum"))
            paths["sentences"] = write_table(out / "sentence_scores.parquet", sentence_df, meta)
        if runner.is_main and options.removal_top_k > 0 and self._index is None:
            removal_df = self._summed_detail("removal", parts, instance_df, names, (
                "score_full", "score_without", "score_removal_joint", "score_removal_additive"))
            if len(removal_df):
                paths["removal"] = write_table(out / "behaviour_removal.parquet", removal_df, meta)
        return ScoresReady(
            scores_dir=out, measurements=names, instance_scores=instance_df, measurement_info=info,
            instance_scores_path=paths.get("instance"), token_scores=token_df, token_scores_path=paths.get("tokens"),
            sentence_scores=sentence_df, sentence_scores_path=paths.get("sentences"),
            pairwise_scores_path=paths.get("pairwise"), behaviour_removal=removal_df,
            behaviour_removal_path=paths.get("removal"), directions=directions,
        )

    # ------------------------------------------------------------ directions
    def _group_directions(self, group: list[str], info: dict[str, dict[str, Any]]) -> GroupDirections:
        """v = H⁻¹∇f of every measurement on one group of modules.

        Every rank runs the measurement pass over its shard of the measurement data (sums reduced
        once); the main rank alone preconditions and broadcasts v, so only one rank touches the factors.
        """
        sub = {n: self.tracked[n] for n in group}
        gradients = {}
        for spec in self.specs:
            gradients[spec.name], info[spec.name]["f_value"] = self._measurement_gradient(sub, spec)
        k = self.partitions.index(list(group))
        partitioned = len(self.partitions) > 1
        suffix = f"partition-{k:03d}" if partitioned else ""
        label = f" [partition {k + 1}/{len(self.partitions)}]" if partitioned else ""
        if self.options.refine_iterations > 0:
            result = self._refine(group, sub, stack_gradients(gradients), suffix, "directions" + label)
            directions = result.directions
            for name in directions.names:
                info[name]["refinement"] = {**result.info(), "residuals": result.residuals[name],
                                            "fisher": self._refine_fisher, "blocks": self.options.refine_blocks}
        else:
            directions = None
            if self.runner.is_main:
                group_factors = self.factors.subset(group).to(self.runner.device, covariances=False)
                directions = measurement_directions(group_factors, gradients)
                del group_factors
            directions = self.runner.broadcast(directions, src=0)
        return GroupDirections(group=list(group), tracked=sub, directions=directions.to("cpu"),
                               key=directions_key(directions, self.factors), suffix=suffix, label=label)

    # ------------------------------------------------------------- refinement
    @property
    def _refine_fisher(self) -> str:
        return self.options.refine_fisher or self.factors.fisher

    def _refinement_indices(self) -> list[int] | None:
        """The seeded, domain-stratified sample of training examples behind the refinement's Fisher."""
        domains = data_strata(self.data, ("domain",)) or [None] * len(self.data.attribution_ids("train"))
        return sample_indices(domains, self.options.refine_examples, self.options.refine_seed, "refine_examples")

    def _refine(self, group: list[str], tracked: dict[str, nn.Module], gradients: Directions, suffix: str,
                what: str, stem: str = "directions") -> RefineResult:
        """PCG from EK-FAC toward (F + λ)⁻¹∇f on every rank (each its shard of the sample), resumable."""
        options, runner = self.options, self.runner
        group_factors = self.factors.subset(group).to(runner.device, covariances=False)
        product = FisherProduct(self.model, tracked, self.loss_fn, self._refine_fisher, blocks=options.refine_blocks,
                                seed=options.refine_seed, dtype=group_factors.modules[group[0]].lambdas.dtype)
        indices = self._refinement_indices()
        state_file = self.out / "refine" / (suffix or "all") / f"{stem}.pt"
        key = refinement_key(gradients, self.factors, self._refine_fisher, options.refine_blocks, indices,
                             options.refine_seed)
        state = load_refinement_state(state_file, key, runner.device)
        if state is not None:
            log(f"{what}: resuming refinement at iteration {state['iteration']}")

        def save(current: dict[str, Any]) -> None:
            relative = ", ".join(f"{n} {r[-1]:.2e}" for n, r in current["residuals"].items())
            log(f"{what}: CG iteration {current['iteration']}: relative residual {relative}")
            if runner.is_main:
                save_refinement_state(state_file, key, current)

        result = refine_directions(
            runner, lambda: self.data.attribution_dataloader("train", options.batch_size, indices), group_factors,
            product, gradients, options.refine_iterations, options.refine_tolerance, state=state, on_iteration=save,
        )
        log(f"{what}: refinement stopped ({result.stop_reason}) after {result.iterations} iteration(s), "
            f"{result.passes} pass(es) over {result.examples} training sequences")
        return result

    def _measurement_gradient(self, tracked: dict[str, nn.Module], spec: MeasurementSpec) -> tuple[dict[str, torch.Tensor], float]:
        """∇f and f of one measurement from a dedicated pass over its batches.

        Unweighted batches: f = mean log p over the sequences (the paper's form). Batches with
        ``measurement_weight``: f = Σ w_i log p_i (the weights carry any normalisation).
        """
        loss_fn = weighted_loss_fn(self.loss_fn)
        acc: dict[str, Any] = {"sum": None, "count": 0, "f_sum": 0.0, "weighted": None}

        def step(batch: Any) -> None:  # adds Σ_i w_i ∇log p_i (w_i = 1 unweighted) and Σ_i w_i log p_i
            weighted = "measurement_weight" in batch
            if acc["weighted"] is None:
                acc["weighted"] = weighted
            elif acc["weighted"] != weighted:
                raise ValueError("a measurement's batches must all carry 'measurement_weight' or none of them")
            size = int(batch["input_ids"].shape[0])
            grad = measurement_gradient(self.model, [batch], tracked, loss_fn=loss_fn)
            summed = {k: v * size for k, v in grad.items()}
            acc["sum"] = summed if acc["sum"] is None else {k: acc["sum"][k] + v for k, v in summed.items()}
            acc["count"] += size
            with torch.no_grad():
                acc["f_sum"] += float(-loss_fn(self.model, batch, False).sum())

        self.runner.run(Pass(MEASURE, step, label=f"measurement {spec.name}"), spec.loader)
        if acc["sum"] is None:
            raise ValueError(f"measurement {spec.name!r} has no sequences on this rank (an empty loader?)")
        if self.runner.world_size > 1:
            self.runner.all_reduce_sum_(acc["sum"].values())
            totals = torch.tensor([acc["count"], acc["f_sum"]], dtype=torch.float64, device=self.runner.device)
            self.runner.all_reduce_sum_([totals])
            acc["count"], acc["f_sum"] = int(totals[0]), float(totals[1])
        if acc["weighted"]:
            return acc["sum"], acc["f_sum"]
        return {k: v / acc["count"] for k, v in acc["sum"].items()}, acc["f_sum"] / acc["count"]

    # --------------------------------------------------------------- instance
    def _score_training_set(self, tracked: dict[str, nn.Module], directions: Directions, parts: Path, key: str,
                            what: str, index_suffix: str | None = None,
                            examples: Sequence[int] | None = None) -> pd.DataFrame:
        """Scores of every training example for ``directions`` (columns ``score_<name>``), resumable.

        With several streams the parts of consecutive batches flow through the stream workers
        without waiting for each batch to finish; finished batches are written in loader order from
        the loop's thread, so the parts on disk are the same as with one stream.

        ``index_suffix`` (the instance pass only): with ``index``, the same pass writes this module
        group's index rows; examples already scored but not yet indexed are passed again (their
        score rows are not written twice). With ``from_index`` the scores come from the index, unless
        ``examples`` are given: those are scored exactly (the index check) and only they are returned.
        """
        if self._index is not None and examples is None:
            return self._scores_from_index(directions, what)
        ids = list(self.data.attribution_ids("train"))
        wanted = range(len(ids)) if examples is None else sorted(set(examples))
        done = done_indices(parts, key)
        index = self._index_state(tracked, index_suffix, ids) if self.options.index and index_suffix is not None else None
        if index is None:
            todo = [i for i in wanted if i not in done]
        else:
            todo = [i for i in range(len(ids)) if i not in done or i not in index.done]
        if done & set(wanted):
            log(f"{what} scores: resuming, {len(done & set(wanted))} of {len(wanted)} already scored")
        if index is not None and index.done:
            log(f"{what} index: resuming, {len(index.done)} of {len(ids)} already indexed")
        if todo:
            on_device = directions.to(self.runner.device)
            names, streams = list(directions.names), self.options.streams
            writer = PartWriter(parts, key, rank=self.runner.rank)
            pool = Streams(streams, lambda: None) if streams > 1 else None
            in_flight: deque = deque()

            def score(part: Any) -> Any:
                if index is None:
                    return instance_scores(self.model, part, on_device, tracked, loss_fn=self.loss_fn).detach().cpu()
                scores, rows = scores_and_projections(self.model, part, on_device, index.basis, tracked, self.loss_fn)
                return scores.detach().cpu(), rows.cpu()

            def write(indices: list[int], result: Any) -> None:
                if index is None:
                    scores = result
                    writer.add({"index": i, "id": ids[i], **{f"score_{n}": float(scores[r, m]) for m, n in enumerate(names)}}
                               for r, i in enumerate(indices))
                    return
                scores, rows = result
                writer.add({"index": i, "id": ids[i], **{f"score_{n}": float(scores[r, m]) for m, n in enumerate(names)}}
                           for r, i in enumerate(indices) if i not in done)
                new = [r for r, i in enumerate(indices) if i not in index.done]
                if new:
                    index.writer.add([indices[r] for r in new], [ids[indices[r]] for r in new], rows[new])

            def joined(results: list[Any]) -> Any:
                if index is None:
                    return torch.cat(results)
                return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

            def write_finished(wait: bool) -> None:
                while in_flight and (wait or all(f.done() for f in in_flight[0][1])):
                    indices, futures = in_flight.popleft()
                    write(indices, joined([f.result() for f in futures]))

            def step(batch: Any) -> None:
                indices = batch_indices(batch, "instance scores")
                if pool is None:
                    write(indices, score(batch))
                    return
                futures = [pool.submit(lambda _state, part: score(part), part) for part in split_batch(batch, streams)]
                in_flight.append((indices, futures))
                write_finished(wait=False)

            def end() -> None:
                if pool is not None:
                    write_finished(wait=True)
                    pool.close()
                writer.flush()
                if index is not None:
                    index.writer.flush()

            def abort() -> None:  # an interrupted pass: drop the queued parts (written parts stay)
                if pool is not None:
                    pool.close(wait=False)
                    in_flight.clear()

            self.runner.run(Pass(INSTANCE, step, end=end, abort=abort, label=f"{what} scores"),
                            self.data.attribution_dataloader("train", self.options.batch_size, todo))
            self.runner.barrier()
        if index is not None:
            self._note_index(index, what, len(ids))
        table = read_parts(parts, key)
        if table is None:
            raise ValueError(f"{what} scores: the training loader yielded no batches (is attribution_dataloader('train') empty?)")
        frame = table.to_pandas().drop_duplicates("index").set_index("index").sort_index()
        return frame if examples is None else frame.loc[frame.index.isin(wanted)]

    # ------------------------------------------------------------------ index
    @property
    def _index_dir(self) -> Path:
        return Path(self.options.index_dir) if self.options.index_dir else self.out / "index"

    def _index_state(self, tracked: dict[str, nn.Module], suffix: str, ids: list[str]) -> IndexState:
        """The writer of one module group's index (every rank its own parts) and the examples it holds."""
        options, factors = self.options, self.factors
        basis = eigen_basis(factors, options.index_rank, list(tracked))
        data = data_fingerprint(ids)
        key = index_key(basis, options.index_dtype, factors.model_fingerprint, data)
        provenance = {"model_fingerprint": factors.model_fingerprint, "data_fingerprint": data, "n_train": len(ids),
                      "factors": factors_digest(factors), "fisher": factors.fisher, "damping_rule": factors.damping_rule}
        directory = self._index_dir / suffix
        if self.runner.is_main:
            for folder in remove_overlapping_groups(self._index_dir, directory, tracked):
                log(f"training index: removed {folder}, written with another module partitioning")
        writer = IndexWriter(directory, basis, options.index_dtype, key, provenance, rank=self.runner.rank)
        self.runner.barrier()  # rank 0's manifest (and removal of stale parts) before any rank counts parts
        return IndexState(writer, basis.to(self.runner.device), indexed(directory, key))

    def _note_index(self, index: IndexState, what: str, n_train: int) -> None:
        held = indexed(index.writer.directory, index.writer.key)
        per_example = index.writer.bytes_per_example
        described = {"index": str(self._index_dir), "kind": index.basis.kind, "rank": index.basis.rank,
                     "dtype": index.writer.dtype, "exact": index.basis.full_rank(), "examples": len(held)}
        written = self._written or {**described, "bytes_per_example": 0}
        written["bytes_per_example"] = int(written["bytes_per_example"]) + per_example
        written["examples"] = min(int(written["examples"]), len(held))
        self._written = written
        log(f"{what} index: {len(held)} of {n_train} examples in {index.writer.directory} (rank {index.basis.rank}, "
            f"{index.writer.dtype}, {per_example / 1024:.1f} KiB per example, kept share of the gradients' energy "
            f"{index.basis.info.get('energy', float('nan')):.3f})")

    def _open_index(self, train_ids: list[str]) -> TrainingIndex:
        """The stored index, checked against these weights, training ids and modules, and complete."""
        index = TrainingIndex.open(self._index_dir)
        index.check(self.factors.model_fingerprint, data_fingerprint(train_ids), len(train_ids))
        missing = [n for n in self.factors.modules if n not in index.modules]
        if missing:
            raise IndexMismatchError(f"the training index under {self._index_dir} has no rows for tracked modules "
                                     f"{missing}; write it with the same modules (index: true)")
        held = index.indices()
        if len(held) < len(train_ids):
            raise IndexMismatchError(f"the training index under {self._index_dir} holds {len(held)} of "
                                     f"{len(train_ids)} training examples (an interrupted pass?); run the instance "
                                     "pass with index: true again to complete it")
        described = index.describe()
        log(f"from_index: scoring against the training index {described['index']} ({described['kind']}, rank "
            f"{described['rank']}{', exact' if described['exact'] else ''}, {described['dtype']}); no pass over the "
            "training set")
        return index

    def _check_index_scores(self, groups: list[tuple[dict[str, nn.Module], Directions, str, str, str]],
                            scored: pd.DataFrame, names: list[str], stem: str, exact_top: int
                            ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Index scores with exact scores where they matter (:mod:`infra_pl.influence.index_check`).

        A seeded sample (``index_check_examples``) and each measurement's top and bottom
        ``exact_top`` examples are scored exactly by an instance pass over those examples only
        (per module group: tracked modules, directions, key, folder suffix, label; parts under
        ``<output>/<stem>_parts``); the sample measures the agreement and calibrates every other
        index score. Returns the frame (with ``exact_score``) and what ``scored_from`` records.
        """
        options = self.options
        columns = [f"score_{n}" for n in names]
        raw = scored[columns].to_numpy(dtype=np.float64)
        rows = list(scored.index)
        if self._index.full_rank():
            log("from_index: the index is full rank, so its scores are exact; no check pass")
            return scored.assign(exact_score=True), {"check": None, "calibrated": False, "exact_examples": len(rows)}
        strata = data_strata(self.data, ("domain",)) or [None] * len(rows)
        sample = []
        if options.index_check_examples > 0:
            picked = sample_indices([strata[i] for i in rows], options.index_check_examples, options.index_check_seed,
                                    "index_check_examples")
            sample = list(range(len(rows))) if picked is None else picked
        extremes = extreme_rows(raw, exact_top)
        chosen = sorted(set(sample) | set(extremes))
        if not chosen:
            log("WARNING from_index: index_check_examples and index_exact_top are 0: the scores are the raw index "
                "scores, not calibrated and not checked against exact scores")
            return scored.assign(exact_score=False), {"check": None, "calibrated": False, "exact_examples": 0}
        examples = [rows[r] for r in chosen]
        start = time.perf_counter()
        exact_frame = sum_score_frames([
            self._score_training_set(tracked, directions, self.out / f"{stem}_parts" / suffix, key,
                                     stem.replace("_", " ") + label, examples=examples)
            for tracked, directions, key, suffix, label in groups
        ])
        position = {example: r for r, example in enumerate(rows)}
        exact = {position[e]: exact_frame.loc[e, columns].to_numpy(dtype=np.float64) for e in examples}
        agreements = None
        if sample:
            truth = np.stack([exact[r] for r in sample])
            agreements = [fit_agreement(n, raw[sample, m], truth[:, m]) for m, n in enumerate(names)]
        values, mask = combine(raw, exact, agreements)
        log(f"from_index: {len(chosen)} examples scored exactly ({len(sample)} sampled, {len(extremes)} at the "
            f"extremes) in {time.perf_counter() - start:.1f} s")
        if len(names) > 8 and agreements:  # pairwise: one line for all queries
            pearson = np.array([a.pearson for a in agreements])
            log(f"from_index {len(names)} measurements: Pearson with exact scores on {len(sample)} sampled examples "
                f"mean {np.nanmean(pearson):.3f}, worst {np.nanmin(pearson):.3f}; every score calibrated by its own line")
        poor = [a for a in agreements or [] if not a.pearson >= POOR_AGREEMENT]
        for agreement in agreements or [] if len(names) <= 8 else poor[:3]:
            log("from_index " + agreement.sentence())
        if poor:
            log(f"WARNING from_index: {len(poor)} of {len(names)} measurement(s) agree poorly with exact scores "
                f"(Pearson < {POOR_AGREEMENT} on the check sample, e.g. '{poor[0].measurement}' "
                f"{poor[0].pearson:.3f}): raise index_rank, or score without from_index")
        if not agreements:
            log("WARNING from_index: index_check_examples is 0: scores other than the extremes are raw index scores "
                "(not calibrated, agreement with exact scores unknown)")
        out = scored.copy()
        out[columns] = values
        out["exact_score"] = mask
        info = {"check": {a.measurement: a.as_dict() for a in agreements} if agreements else None,
                "calibrated": bool(agreements), "exact_examples": int(mask.sum()),
                "check_seed": options.index_check_seed}
        return out, info

    def _scores_from_index(self, directions: Directions, what: str) -> pd.DataFrame:
        """Scores of every indexed example from the stored rows (main rank; the frame is broadcast)."""
        assert self._index is not None
        frame = None
        if self.runner.is_main:
            start = time.perf_counter()
            order, ids, matrix = self._index.scores(directions)
            frame = pd.DataFrame({"index": order, "id": ids,
                                  **{f"score_{n}": matrix[:, m] for m, n in enumerate(directions.names)}})
            frame = frame.set_index("index").sort_index()
            log(f"{what} scores: from the training index, {len(frame)} examples x {len(directions.names)} "
                f"measurement(s) in {time.perf_counter() - start:.1f} s")
        return self.runner.broadcast(frame, src=0)

    # --------------------------------------------------------------- pairwise
    def _pairwise(self, parts: list[GroupDirections], meta: dict[str, Any]) -> Path | None:
        """Per-query scores (n_query x n_train) for the measured items, in long format.

        Queries are the datamodule items the measurements are defined on (``spec.split`` and
        ``spec.indices``; for the default, the D_correct items of every domain).
        """
        itemised = [s for s in self.specs if s.indices is not None and s.split is not None]
        splits = {s.split for s in itemised}
        if not itemised or len(splits) > 1:
            log("pairwise scores: skipped, they need measurements over items of one datamodule split "
                f"(got {sorted(splits) or 'none'})")
            return None
        split = splits.pop()
        query_ids = list(self.data.attribution_ids(split))
        has_meta = callable(getattr(self.data, "attribution_metadata", None))
        query_meta = list(self.data.attribution_metadata(split)) if has_meta else None
        train_ids = list(self.data.attribution_ids("train"))
        # The measurements' own sequences (their targets may be the model's generations, not the
        # datamodule's references), so per-query scores average to the instance scores.
        loader = [batch for s in itemised for batch in s.loader]
        order = [i for batch in loader for i in batch_indices(batch, "pairwise scores")]  # query_k = k-th item
        if len(set(order)) != len(order):
            log("pairwise scores: skipped, an item belongs to more than one measurement")
            return None
        frames, groups = [], []
        for part in parts:  # the additive share of every module group (one group without partitions)
            group_factors = self.factors.subset(part.group).to(self.runner.device, covariances=False)
            if self.options.refine_pairwise and self.options.refine_iterations > 0:
                query_gradients = query_directions(self.model, loader, IdentityPreconditioner(), part.tracked,
                                                   loss_fn=self.loss_fn, streams=self.options.streams)  # ∇log p(q)
                refined = self._refine(part.group, part.tracked, query_gradients, part.suffix, "pairwise" + part.label,
                                       stem="pairwise")
                directions = refined.directions.to(dtype=self.options.torch_pairwise_dtype)
            else:
                directions = query_directions(self.model, loader, group_factors, part.tracked, loss_fn=self.loss_fn,
                                              streams=self.options.streams, dtype=self.options.torch_pairwise_dtype)
            del group_factors
            key = directions_key(directions, self.factors)
            frames.append(self._score_training_set(part.tracked, directions, self.out / "pairwise_parts" / part.suffix,
                                                   key, "pairwise" + part.label))
            groups.append((part.tracked, directions, key, part.suffix, part.label))
        scored = sum_score_frames(frames)
        if self._index is not None:  # per query: the check sample calibrates, no extremes (K x queries examples)
            query_names = [c[len("score_"):] for c in scored.columns if c.startswith("score_")]
            scored, checked = self._check_index_scores(groups, scored, query_names, "pairwise_check", 0)
            summary = None
            if checked.get("check"):
                pearson = [line["pearson"] for line in checked["check"].values()]
                summary = {"examples": next(iter(checked["check"].values()))["examples"],
                           "pearson_mean": float(np.nanmean(pearson)), "pearson_min": float(np.nanmin(pearson))}
            meta = {**meta, "scored_from": {**meta.get("scored_from", {}), "pairwise_check": summary}}
        rows = []
        exact = scored["exact_score"] if "exact_score" in scored else None
        for k, query_index in enumerate(order):
            domain = query_meta[query_index].get("domain") if query_meta is not None else None
            for train_index, value in scored[f"score_query_{k}"].items():
                row = {"query_id": query_ids[query_index], "query_domain": domain,
                       "train_id": train_ids[int(train_index)], "score": float(value)}
                if exact is not None:
                    row["exact_score"] = bool(exact.at[train_index])
                rows.append(row)
        if not self.runner.is_main:
            return None
        path = write_table(self.out / "pairwise_scores.parquet", pd.DataFrame(rows), meta)
        log(f"pairwise scores: {len(order)} queries x {len(scored)} training examples -> {path}")
        return path

    # ----------------------------------------------------------------- tokens
    def _token_examples(self, instance_df: pd.DataFrame, names: list[str], n_train: int) -> list[int]:
        """Every example with ``token_all``, else the top-K per training domain and measurement."""
        if self.options.token_all:
            return list(range(n_train))
        groups = [g for _, g in instance_df.groupby("domain")] if "domain" in instance_df else [instance_df]
        k = self.options.token_top_k
        return sorted({int(i) for n in names for g in groups for i in g.nlargest(k, f"score_{n}")["index"]})

    def _token_pass(self, part: GroupDirections, top: list[int], train_ids: list[str]) -> pd.DataFrame:
        """Token scores of the ``top`` examples for one group; every rank writes its own Parquet shard."""
        if self.logits_fn is None:
            raise ValueError("token scores need a logits function (the module's attribution_logits)")
        parts_dir = self.out / "token_parts" / part.suffix
        key = part.key + ":" + indices_key(top)
        done = done_indices(parts_dir, key)
        todo = [i for i in top if i not in done]
        if done:
            log(f"token scores{part.label}: resuming, {len(done)} of {len(top)} examples already scored")
        if todo:
            directions = part.directions.to(self.runner.device)
            names = list(part.directions.names)
            tokenizer = getattr(self.data, "tokenizer", None)
            writer = PartWriter(parts_dir, key, rank=self.runner.rank)

            def step(batch: Any) -> None:
                indices = batch_indices(batch, "token scores")
                scores = token_scores(self.model, batch, directions, part.tracked, logits_fn=self.logits_fn).detach().cpu()
                targets = batch["labels"][:, 1:].cpu()
                rows = []
                for row, index in enumerate(indices):
                    positions = (targets[row] != -100).nonzero().flatten().tolist()
                    pieces = [tokenizer.decode([int(targets[row, p])]) if tokenizer is not None else str(int(targets[row, p]))
                              for p in positions]
                    for m, name in enumerate(names):
                        rows.extend({"id": train_ids[index], "index": index, "measurement": name, "position": p,
                                     "token": piece, "score": float(scores[m, row, p])} for p, piece in zip(positions, pieces))
                writer.add(rows)

            # The forward-mode token pass fragments glibc's heap; its large buffers get their own
            # mappings instead (infra_pl.allocator.mmap_large_buffers; measured there).
            self.runner.run(Pass(TOKENS, step, end=writer.flush, label="token scores" + part.label,
                                 memory=mmap_large_buffers),
                            self.data.attribution_dataloader("train", self.options.batch_size, todo))
        self.runner.barrier()
        table = read_parts(parts_dir, key)
        return pd.DataFrame() if table is None else table.to_pandas()

    # ---------------------------------------------------------- sentence detail
    def _summed_detail(self, kind: str, parts: list[GroupDirections], instance_df: pd.DataFrame, names: list[str],
                       columns: tuple[str, ...]) -> pd.DataFrame:
        """Sentence scores or joint removals per module group, their score columns summed over groups."""
        from infra_pl.influence.sentence_tables import behaviour_removal_table, sentence_table

        device, tagged = self.runner.device, self.tags.tagged
        frames = []
        for part in parts:
            if kind == "sentence":
                frames.append(sentence_table(self.model, self.data, part.tracked, part.directions, instance_df, names,
                                             tagged, self.options.sentence_top_k, self.loss_fn, self.logits_fn,
                                             self.tags.tagger, device))
            else:
                frames.append(behaviour_removal_table(self.model, self.data, part.tracked, part.directions, instance_df,
                                                      names, tagged, self.options.removal_top_k, self.loss_fn, device))
        total = frames[0].copy()
        for column in columns:
            if column in total:
                total[column] = sum(frame[column].to_numpy() for frame in frames)
        return total


def compute_scores(model: nn.Module, data: Any, factors: Factors, specs: list[MeasurementSpec], output_dir: str | Path,
                   options: ScoreOptions | None = None, loss_fn: LossFn = causal_lm_loss,
                   logits_fn: LogitsFn | None = causal_lm_logits, tags: Tags | None = None,
                   partitions: list[list[str]] | None = None, progress: bool = True) -> ScoresReady:
    """Instance (and token, sentence, pairwise) scores in this process: the pure API of the callback.

    The same driver as ``InfluenceScores``, so it writes the same files under ``output_dir`` and
    resumes an interrupted run from the parts there. ``data`` implements
    :class:`infra_pl.protocol.AttributionData`; ``specs`` are the measurements
    (:class:`infra_pl.measurements.MeasurementSpec`, e.g. one per evaluation domain).
    """
    from infra_pl.ekfac.passes import model_device

    options = options or ScoreOptions(sentence_top_k=0, removal_top_k=0, token_top_k=0)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    runner = InProcessRunner(model_device(model), progress=progress)
    run = ScoreRun(options, runner, model, data, factors, specs, out, tags or Tags(None, None), loss_fn, logits_fn,
                   partitions)
    return run.run()

