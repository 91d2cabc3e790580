"""Measurements f (paper Eq. 6 and variants) as pluggable objects for ``InfluenceScores``.

A :class:`Measurement` turns the run (trainer, module, datamodule) into one or more
:class:`MeasurementSpec`: a name and the batches of sequences f is defined on. The callback
then runs one gradient pass per spec and preconditions ∇f once (v = H⁻¹∇f), so every product
(instance, token, sentence, pairwise scores) works for any measurement. What f is:

* batches without ``"measurement_weight"``: f = mean over the sequences of log p(targets), the
  paper's form (every target token of every sequence, summed per sequence);
* batches with ``"measurement_weight"`` (a float tensor [B]): f = Σ_i w_i log p(targets_i),
  e.g. a margin with w = +1/N for the correct answers and −1/N for the wrong ones.

Select them in YAML like any Lightning component::

    - class_path: infra_pl.callbacks.InfluenceScores
      init_args:
        measurements:
          - class_path: infra_pl.measurements.CorrectAnswerLogLikelihood
            init_args: {n: 100, min_correct: 10}
          - class_path: infra_pl.measurements.TargetLogProb
            init_args: {name: capital, prompts: ["What is the capital of France?"], targets: "Paris"}

Built-ins: :class:`CorrectAnswerLogLikelihood` (the default: mean log-likelihood over D_correct,
one measurement per evaluation domain), :class:`TargetLogProb` (log-probability of given target
strings for given prompts) and :class:`AnswerMargin` (reference answer vs the model's own wrong
answer, on the items it got wrong).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from infra_pl.console import log as _log
from infra_pl.data.chat_encoding import IGNORE_INDEX, collate_padded, tokenize_chat
from infra_pl.eval.dcorrect import latest_correctness_file, read_correctness, select_measurement_sets
from infra_pl.protocol import ProtocolError, require_data

UNLIMITED = 1 << 30



@dataclass
class MeasurementSpec:
    """One measurement function f: its name, the batches it is defined on, and a description.

    ``loader`` yields dict batches the module's ``per_example_loss`` can read (for the built-ins:
    ``input_ids``, ``attention_mask``, ``labels`` with -100 on non-targets), optionally with
    ``measurement_weight`` [B] (see the module docstring). ``info`` goes to
    ``measurement_info.json`` and the Parquet metadata. ``split``/``indices`` say which
    datamodule items the sequences are, when they are (pairwise mode needs that).
    """

    name: str
    loader: Iterable[Mapping[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    indices: list[int] | None = None


@dataclass
class MeasurementContext:
    """What a measurement may use to build its batches."""

    trainer: Any
    pl_module: Any
    datamodule: Any
    batch_size: int | None = None


class Measurement(ABC):
    """Base class of measurements: implement :meth:`build` (and keep names unique)."""

    @abstractmethod
    def build(self, context: MeasurementContext) -> list[MeasurementSpec]:
        """The measurement functions this object defines, with their batches."""

    def describe(self) -> str:
        return type(self).__name__


# ----------------------------------------------------------------- helpers


def correctness_rows(context: MeasurementContext, correctness_file: str | None,
                     records: Sequence[Mapping[str, Any]] | None = None) -> list[dict[str, Any]] | None:
    """Per-item correctness from ``validate`` (the given file, or the newest under the run folder).

    When there is none, ``validate`` runs first (greedy generation), as ``attribute`` always did.
    The file must belong to the weights being attributed (its ``weights_fingerprint``) and, given
    the evaluation ``records``, to this evaluation set (ids): otherwise it is refused, naming both.
    """
    path = Path(correctness_file) if correctness_file else latest_correctness_file(context.trainer.default_root_dir)
    if path is None or not path.exists():
        _log("no correctness file found; running validate (greedy generation) to produce one")
        context.trainer.validate(context.pl_module, datamodule=context.datamodule, verbose=False)
        path = getattr(context.pl_module, "last_correctness_path", None)
        if path is None:
            return None
    _log(f"D_correct from {path}")
    rows = read_correctness(path)
    check_correctness_weights(path, rows, context.pl_module)
    if records is not None:
        check_correctness_ids(path, rows, records)
    return rows


def check_correctness_weights(path: Path, rows: Sequence[Mapping[str, Any]], pl_module: Any) -> None:
    """Refuse a correctness file written by other weights than the module's (a stale file)."""
    recorded = {row.get("weights_fingerprint") for row in rows} - {None}
    if not recorded:
        _log(f"{path} records no weights fingerprint (written by hand or an older version): whether it belongs to "
             "this checkpoint cannot be checked")
        return
    model = getattr(pl_module, "attribution_model", None)
    if not callable(model):
        return
    from infra_pl.ekfac.fingerprint import weights_fingerprint

    current = weights_fingerprint(model())
    if recorded != {current}:
        raise ValueError(
            f"{path} was written by validate for other weights (fingerprint {', '.join(sorted(recorded))}) than the "
            f"checkpoint being attributed ({current}): D_correct would be the items another model got right. Run "
            "validate with this checkpoint, or set InfluenceScores.correctness_file to its file."
        )


def check_correctness_ids(path: Path, rows: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a correctness file that describes another evaluation set; say how many ids are unknown."""
    known = {r["id"] for r in records}
    matched = sum(1 for row in rows if row["id"] in known)
    if rows and matched == 0:
        raise ValueError(
            f"{path}: none of its {len(rows)} item ids is in this run's evaluation set ({len(known)} items): it was "
            "written for other evaluation data. Run validate on this configuration."
        )
    if matched < len(rows):
        _log(f"{path}: {len(rows) - matched} of {len(rows)} rows name items that are not in this evaluation set; "
             "they are ignored")


def eval_records(datamodule: Any, needed_for: str) -> list[dict[str, Any]]:
    """``[{id, domain, ...}]`` of the evaluation split, from the data protocol."""
    require_data(datamodule, ["attribution_ids", "attribution_metadata", "attribution_dataloader"], needed_for)
    ids = list(datamodule.attribution_ids("eval"))
    metadata = list(datamodule.attribution_metadata("eval"))
    if len(metadata) != len(ids):
        raise ProtocolError(f"attribution_metadata('eval') has {len(metadata)} rows for {len(ids)} ids")
    records = []
    for example_id, meta in zip(ids, metadata):
        if "domain" not in meta:
            raise ProtocolError(f"{needed_for} groups evaluation items by 'domain'; attribution_metadata('eval') lacks it")
        records.append({**meta, "id": example_id})
    return records


def sequences_loader(features: list[dict[str, Any]], pad_token_id: int, batch_size: int | None) -> DataLoader:
    """Right-padded batches of ``{input_ids, labels, index[, weight]}`` features, in order."""

    def collate(chunk: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate_padded(chunk, pad_token_id)
        if "weight" in chunk[0]:
            batch["measurement_weight"] = torch.tensor([f["weight"] for f in chunk], dtype=torch.float64)
        return batch

    return DataLoader(features, batch_size=batch_size or 16, shuffle=False, collate_fn=collate)


def _tokenizer_of(datamodule: Any, needed_for: str) -> Any:
    tokenizer = getattr(datamodule, "tokenizer", None)
    if tokenizer is None:
        raise ProtocolError(f"{needed_for} tokenises text with datamodule.tokenizer, which {type(datamodule).__name__} lacks")
    return tokenizer


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


# ---------------------------------------------------------------- built-ins


TARGETS = ("generated", "reference", "auto")


class CorrectAnswerLogLikelihood(Measurement):
    """The paper's f (Eq. 6): mean log p(correct answer y_i | problem x_i) over D_correct, per domain.

    D_correct = ``n`` randomly drawn correctly answered evaluation items of each domain (all if
    fewer), read from ``validate``'s ``correctness.jsonl``; below ``min_correct`` a domain stops
    the run unless ``fallback: reference`` (all items' reference answers, labelled in every
    output). Measurement names are the domains (``math``, ``code``).

    ``target`` says which correct answer y_i is teacher-forced:

    * ``generated``: the model's own correct generation (from ``correctness.jsonl``); the answer
      the model actually gave, in the style it learned;
    * ``reference``: the dataset's reference solution; refused for items whose reference is a
      stand-in (LiveCodeBench ships none); an answer-only reference ("The answer is 7", AIME
      without solutions) is measured but counted and named in the output;
    * ``auto`` (default): ``generated`` when the training traces are long chain-of-thought
      (thought markers: a human solution is in another style than what the model learned) and
      for items without a full reference solution; ``reference`` otherwise.

    The choice per measurement (and the count per target kind) goes to ``measurement_info.json``
    and the report. With ``fallback: reference`` the fallback domains always use references.

    Data: ``attribution_ids("eval")``, ``attribution_metadata("eval")`` with ``domain``,
    ``attribution_dataloader("eval", ...)``, and for generated targets ``attribution_example``
    and ``datamodule.tokenizer``; a module whose ``validate`` writes the correctness file
    (SFTModule), or ``correctness_file``.
    """

    def __init__(
        self,
        n: int = 100,
        min_correct: int = 10,
        fallback: str | None = None,
        correctness_file: str | None = None,
        seed: int = 0,
        target: str = "auto",
    ) -> None:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.n = n
        self.min_correct = min_correct
        self.fallback = fallback
        self.correctness_file = correctness_file
        self.seed = seed
        self.target = target

    def preflight(self, context: MeasurementContext) -> None:
        """Refuse, before any pass, what cannot work on this data: teacher-forcing stand-in references
        (target reference), and, when ``validate`` already wrote a correctness file, too few correct
        items or a reference fallback onto stand-ins."""
        datamodule = context.datamodule
        records = eval_records(datamodule, "CorrectAnswerLogLikelihood (D_correct)")
        kinds = [_reference_kind(datamodule, i) for i in range(len(records))]
        by_domain: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_domain.setdefault(record["domain"], []).append(i)
        for domain, indices in sorted(by_domain.items()):
            stand_ins = [records[i]["id"] for i in indices if kinds[i] == "none"]
            if stand_ins and self.target == "reference":
                choose_targets(domain, [records[i]["id"] for i in indices], [kinds[i] for i in indices], "reference", False, False)
            if stand_ins and self.fallback == "reference":
                _log(f"measurement '{domain}': {len(stand_ins)} evaluation item(s) have no reference solution, so "
                     "fallback: reference cannot be used for this domain (the run stops if it has fewer than "
                     f"min_correct={self.min_correct} correct items)")
        path = Path(self.correctness_file) if self.correctness_file else latest_correctness_file(context.trainer.default_root_dir)
        if path is None or not path.exists():
            return
        rows = read_correctness(path)
        check_correctness_ids(path, rows, records)  # the weights are checked in build, once they are loaded
        sets = select_measurement_sets(records, rows, n=self.n, min_correct=self.min_correct,
                                       seed=self.seed, fallback=self.fallback)
        long_cot = self.target == "auto" and training_is_long_cot(datamodule)
        for name, chosen in sets.items():
            choose_targets(name, chosen.ids, [kinds[i] for i in chosen.indices], self.target, long_cot, bool(chosen.fallback))

    def build(self, context: MeasurementContext) -> list[MeasurementSpec]:
        datamodule = context.datamodule
        records = eval_records(datamodule, "CorrectAnswerLogLikelihood (D_correct)")
        rows = correctness_rows(context, self.correctness_file, records)
        sets = select_measurement_sets(
            records, rows, n=self.n, min_correct=self.min_correct, seed=self.seed, fallback=self.fallback,
        )
        generated = {row["id"]: row.get("generated") for row in rows or [] if row.get("correct")}
        long_cot = self.target == "auto" and training_is_long_cot(datamodule)
        specs = []
        for name, chosen in sets.items():
            kinds = [_reference_kind(datamodule, i) for i in chosen.indices]
            plan = choose_targets(name, chosen.ids, kinds, self.target, long_cot, bool(chosen.fallback))
            label = " (FALLBACK: reference answers of all items)" if chosen.fallback else ""
            counts = {t: plan.count(t) for t in ("generated", "reference")}
            info = chosen.info()
            info.update({
                "target": self.target if self.target != "auto" else _plan_name(plan),
                "target_option": self.target,
                "target_counts": counts,
                "reference_kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
                "long_cot_training": long_cot if self.target == "auto" else None,
            })
            answer_only = sum(1 for t, k in zip(plan, kinds) if t == "reference" and k == "answer_only")
            if answer_only:
                info["answer_only_references"] = answer_only
                _log(f"measurement '{name}': {answer_only} item(s) measured on an answer-only reference "
                     "(no worked solution in the dataset); target: generated measures the model's own solutions")
            _log(f"measurement '{name}': {chosen.n_used} items used, {chosen.n_available} correct available{label}; "
                 f"target: {info['target']} ({counts['generated']} generated, {counts['reference']} reference)")
            if "generated" not in plan:
                loader = datamodule.attribution_dataloader("eval", context.batch_size, chosen.indices)
            else:
                features = generated_features(datamodule, chosen.indices, chosen.ids, plan, generated, name)
                loader = sequences_loader(features, _pad_id(_tokenizer_of(datamodule, "generated targets")), context.batch_size)
            specs.append(MeasurementSpec(name, loader, info, split="eval", indices=list(chosen.indices)))
        return specs


def _reference_kind(datamodule: Any, index: int) -> str:
    """``full`` / ``answer_only`` / ``none`` of an evaluation item (``full`` when the data does not say)."""
    example = getattr(datamodule, "attribution_example", None)
    if example is None:
        return "full"
    return str(example("eval", index).get("reference_kind") or "full")


def _plan_name(plan: list[str]) -> str:
    kinds = sorted(set(plan))
    return kinds[0] if len(kinds) == 1 else "mixed"


def training_is_long_cot(datamodule: Any, share: float = 0.5) -> bool:
    """Whether most training traces are long chain-of-thought (thought markers present)."""
    from infra_pl.data.traces import split_trace

    ids = list(datamodule.attribution_ids("train"))
    if not ids or not callable(getattr(datamodule, "attribution_example", None)):
        return False
    step = max(1, len(ids) // 500)  # a sample is enough to tell a long-CoT recipe from a short one
    sample = range(0, len(ids), step)
    marked = 0
    for i in sample:
        messages = datamodule.attribution_example("train", i)["messages"]
        text = [m["content"] for m in messages if m["role"] == "assistant"][-1]
        marked += split_trace(text).thought is not None
    return marked >= share * len(sample)


def choose_targets(name: str, ids: Sequence[str], kinds: Sequence[str], target: str, long_cot: bool,
                   fallback: bool) -> list[str]:
    """``generated`` or ``reference`` per item; refuses to teacher-force a stand-in reference."""
    if fallback or target == "reference":
        placeholders = [i for i, k in zip(ids, kinds) if k == "none"]
        if placeholders:
            why = "the reference fallback measures reference answers" if fallback else "target: reference"
            raise ValueError(
                f"measurement '{name}': {why}, but {len(placeholders)} item(s) have no reference solution, only a "
                f"stand-in (e.g. {placeholders[:3]}; LiveCodeBench ships none). A stand-in is never measured: use "
                "target: generated (or auto) with enough correctly answered items, or leave that evaluation set out."
            )
        return ["reference"] * len(ids)
    if target == "generated" or long_cot:
        return ["generated"] * len(ids)
    return ["reference" if k == "full" else "generated" for k in kinds]


def generated_features(datamodule: Any, indices: Sequence[int], ids: Sequence[str], plan: Sequence[str],
                       generated: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """Token ids and labels of each item: the prompt with the model's own answer or the reference."""
    tokenizer = _tokenizer_of(datamodule, f"measurement '{name}' (generated targets)")
    require_data(datamodule, ["attribution_example"], f"measurement '{name}' (generated targets)")
    max_length = getattr(datamodule, "max_length", None) or UNLIMITED
    missing = [i for i, t in zip(ids, plan) if t == "generated" and not str(generated.get(i) or "").strip()]
    if missing:
        raise ValueError(
            f"measurement '{name}': target 'generated' needs the model's answers, but the correctness file has no "
            f"'generated' text for {len(missing)} correct item(s) (e.g. {missing[:3]}); rerun validate to write them"
        )
    features = []
    for index, example_id, kind in zip(indices, ids, plan):
        messages = list(datamodule.attribution_example("eval", index)["messages"])
        turn = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        if kind == "generated":
            messages = messages[:turn] + [{"role": "assistant", "content": str(generated[example_id])}]
        tokenized = tokenize_chat(tokenizer, messages[: turn + 1], max_length)
        if tokenized is None:
            raise ValueError(f"measurement '{name}': item {example_id} leaves no answer token within max_length={max_length}")
        features.append({"input_ids": tokenized.input_ids, "labels": tokenized.labels, "index": index})
    return features


class TargetLogProb(Measurement):
    """f = mean over prompts of log p(target | prompt): how much the model says ``targets``.

    Use it to ask which training data makes the model produce a given answer (a fact, a format,
    a refusal). ``targets`` is one string for every prompt or one per prompt. ``template``:
    ``chat`` renders ``[system], user: prompt, assistant: target`` with the tokenizer's chat
    template (the SFT format); ``plain`` concatenates the token ids of prompt and target.
    Only target tokens count. Data: ``datamodule.tokenizer`` (and ``max_length`` if present).
    """

    def __init__(
        self,
        name: str,
        prompts: list[str],
        targets: str | list[str],
        system: str | None = None,
        template: Literal["chat", "plain"] = "chat",
        max_length: int | None = None,
    ) -> None:
        if not prompts:
            raise ValueError("TargetLogProb needs at least one prompt")
        targets = [targets] * len(prompts) if isinstance(targets, str) else list(targets)
        if len(targets) != len(prompts):
            raise ValueError(f"TargetLogProb: {len(targets)} targets for {len(prompts)} prompts")
        if template not in ("chat", "plain"):
            raise ValueError(f"template must be 'chat' or 'plain', got {template!r}")
        self.name = name
        self.prompts = list(prompts)
        self.targets = targets
        self.system = system
        self.template = template
        self.max_length = max_length

    def features(self, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
        """Token ids and labels (targets only) of every prompt + target pair."""
        out = []
        for k, (prompt, target) in enumerate(zip(self.prompts, self.targets)):
            if self.template == "chat":
                messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": target},
                ]
                tokenized = tokenize_chat(tokenizer, messages, max_length)
                if tokenized is None:
                    raise ValueError(f"TargetLogProb {self.name!r}: prompt {k} leaves no target token within {max_length}")
                ids, labels = tokenized.input_ids, tokenized.labels
            else:
                prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
                if not prompt_ids or not target_ids:
                    raise ValueError(f"TargetLogProb {self.name!r}: prompt {k} or its target tokenises to nothing")
                ids = (prompt_ids + target_ids)[:max_length]
                labels = ([IGNORE_INDEX] * len(prompt_ids) + target_ids)[:max_length]
                if all(label == IGNORE_INDEX for label in labels):
                    raise ValueError(f"TargetLogProb {self.name!r}: prompt {k} leaves no target token within {max_length}")
            out.append({"input_ids": ids, "labels": labels, "index": k})
        return out

    def build(self, context: MeasurementContext) -> list[MeasurementSpec]:
        tokenizer = _tokenizer_of(context.datamodule, f"TargetLogProb {self.name!r}")
        max_length = self.max_length or getattr(context.datamodule, "max_length", None) or UNLIMITED
        features = self.features(tokenizer, max_length)
        info = {"name": self.name, "kind": "target_log_prob", "n_used": len(features), "fallback": None,
                "template": self.template}
        return [MeasurementSpec(self.name, sequences_loader(features, _pad_id(tokenizer), context.batch_size), info)]


class AnswerMargin(Measurement):
    """f = mean over wrongly answered items of log p(reference | prompt) − log p(own answer | prompt).

    One measurement per evaluation domain, named ``margin_<domain>``: up-weighting a training
    example with a positive score makes the correct answer more likely *relative to* what the
    model currently says on the items it gets wrong, so the top proponents are the data that
    would fix its mistakes. Items are drawn like D_correct (``n`` per domain, ``seed``) from the
    wrong answers with a non-empty generation in ``correctness.jsonl``; a domain with fewer than
    ``min_items`` is skipped with a message.

    Data: the evaluation split (ids, metadata with ``domain``), ``attribution_example("eval", i)``
    with chat ``messages``, ``datamodule.tokenizer`` (chat template) and ``max_length``.
    """

    def __init__(
        self,
        n: int = 100,
        min_items: int = 1,
        seed: int = 0,
        correctness_file: str | None = None,
        domains: list[str] | None = None,
    ) -> None:
        self.n = n
        self.min_items = min_items
        self.seed = seed
        self.correctness_file = correctness_file
        self.domains = domains

    def build(self, context: MeasurementContext) -> list[MeasurementSpec]:
        datamodule = context.datamodule
        records = eval_records(datamodule, "AnswerMargin")
        require_data(datamodule, ["attribution_example"], "AnswerMargin")
        tokenizer = _tokenizer_of(datamodule, "AnswerMargin")
        max_length = getattr(datamodule, "max_length", None) or UNLIMITED
        position = {r["id"]: i for i, r in enumerate(records)}
        wrong: dict[str, list[tuple[int, str]]] = {}
        for row in correctness_rows(context, self.correctness_file, records) or []:
            generated = (row.get("generated") or "").strip()
            if row.get("correct") or not generated or row["id"] not in position:
                continue
            index = position[row["id"]]
            wrong.setdefault(records[index]["domain"], []).append((index, generated))
        specs = []
        for domain in sorted({r["domain"] for r in records}):
            if self.domains is not None and domain not in self.domains:
                continue
            available = sorted(wrong.get(domain, []))
            if len(available) < self.min_items:
                _log(f"measurement 'margin_{domain}': skipped, {len(available)} wrong answers (minimum {self.min_items})")
                continue
            chosen = sorted(random.Random(f"{self.seed}:margin:{domain}").sample(available, min(self.n, len(available))))
            features = self._pair_features(datamodule, tokenizer, max_length, chosen)
            n_pairs = len(features) // 2
            if n_pairs < self.min_items:
                _log(f"measurement 'margin_{domain}': skipped, {n_pairs} answer pairs fit in max_length")
                continue
            for feature in features:
                feature["weight"] = feature["weight"] / n_pairs
            info = {"name": f"margin_{domain}", "kind": "answer_margin", "n_available": len(available),
                    "n_used": n_pairs, "fallback": None}
            _log(f"measurement 'margin_{domain}': {n_pairs} wrongly answered items (reference vs own answer)")
            specs.append(MeasurementSpec(f"margin_{domain}", sequences_loader(features, _pad_id(tokenizer), context.batch_size), info))
        if not specs:
            raise ValueError("AnswerMargin found no wrongly answered items with a generation in any domain")
        return specs

    @staticmethod
    def _pair_features(datamodule: Any, tokenizer: Any, max_length: int, chosen: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """Reference and own answer of each item, weights +1 / −1 (normalised by the caller)."""
        features = []
        for index, generated in chosen:
            messages = list(datamodule.attribution_example("eval", index)["messages"])
            turn = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            own = messages[:turn] + [{"role": "assistant", "content": generated}]
            reference = tokenize_chat(tokenizer, messages[: turn + 1], max_length)
            answer = tokenize_chat(tokenizer, own, max_length)
            if reference is None or answer is None:
                continue
            features.append({"input_ids": reference.input_ids, "labels": reference.labels, "index": index, "weight": 1.0})
            features.append({"input_ids": answer.input_ids, "labels": answer.labels, "index": index, "weight": -1.0})
        return features


def build_specs(measurements: Sequence[Measurement], context: MeasurementContext) -> list[MeasurementSpec]:
    """All specs of all measurement objects, with unique names (they become Parquet columns)."""
    specs: list[MeasurementSpec] = []
    for measurement in measurements:
        if not isinstance(measurement, Measurement):
            raise TypeError(f"measurements must be infra_pl.measurements.Measurement objects, got {type(measurement).__name__}")
        built = measurement.build(context)
        if not built:
            raise ValueError(f"{measurement.describe()} defined no measurement")
        specs.extend(built)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"measurement names must be unique; repeated: {duplicates}")
    for spec in specs:
        if not spec.name or not all(c.isalnum() or c in "_-." for c in spec.name):
            raise ValueError(f"measurement name {spec.name!r} must be non-empty letters, digits, '_', '-' or '.'")
    return specs
