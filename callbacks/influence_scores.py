"""``InfluenceScores``: measurement directions, instance, token and sentence scores.

Steps (each a dedicated pass or a small direct computation; the math is ``infra_pl.influence``):
1. D_correct per evaluation domain from the correctness file of ``validate`` (Eq. 6).
2. Measurement pass over D_correct: ∇f per domain, preconditioned once: v = H⁻¹∇f.
3. Instance pass over the training set: S(z) = vᵀ∇log p(z) for every example and measurement,
   written to Parquet parts as it goes (an interrupted pass resumes where it stopped).
4. Token pass for the top-K examples per measurement: s_t by forward-mode JVP (Eq. 9); Σ_t s_t = S(z).
5. Sentence scores for the top examples: S(z) − S(z without sentence y), re-scored (Eq. 7), beside
   the cheap token-sum over the sentence (labelled as an approximation).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch

from infra_pl.data.schema import BEHAVIOURS
from infra_pl.eval.dcorrect import latest_correctness_file, read_correctness, select_measurement_sets
from infra_pl.scores_store import PartWriter, done_indices, read_parts, write_table
from infra_pl.trainer import AttributionStep

MEASURE, INSTANCE, TOKENS = "influence/measure", "influence/instance", "influence/tokens"


def _log(message: str) -> None:
    print(f"[infra-pl] {message}", file=sys.stderr)


class InfluenceScores(AttributionStep):
    """Influence of every training example on the reasoning measurements, plus token/sentence detail.

    Args:
        n_correct: size of D_correct per evaluation domain (random correct items; all if fewer).
        min_correct: below this many correct items a domain stops the run (unless ``fallback``).
        fallback: ``reference`` measures on the reference answers of all evaluation items when a
            domain has too few correct ones; every output then carries that label.
        correctness_file: per-example correctness from ``validate`` (default: the newest
            ``correctness.jsonl`` under the run folder; if none exists, validation runs first).
        seed: seed of the D_correct draw.
        batch_size: batch size of the scoring passes (default: the datamodule's eval batch size).
        token_top_k: token scores for the top-K examples per measurement (by instance score).
        token_all: token scores for every training example instead of the top-K.
        sentence_top_k: sentence scores for the top examples per measurement.
        pairwise: also write per-query scores (every D_correct item x every training example) to
            ``pairwise_scores.parquet``, for analyses beyond the mean measurement.
        output_dir: where scores go (default: ``<default_root_dir>/attribution/scores``).
    """

    order = 20

    def __init__(
        self,
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
    ) -> None:
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
        self._phase_data: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _model(pl_module: L.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, "model", None) or pl_module

    @staticmethod
    def _tracked(model: torch.nn.Module, factors: Any) -> dict[str, torch.nn.Module]:
        named = dict(model.named_modules())
        return {name: named[name] for name in factors.modules}

    def _correctness(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> list[dict[str, Any]] | None:
        path = Path(self.correctness_file) if self.correctness_file else latest_correctness_file(trainer.default_root_dir)
        if path is None or not path.exists():
            _log("no correctness file found; running validate (greedy generation) to produce one")
            trainer.validate(pl_module, datamodule=datamodule, verbose=False)
            path = getattr(pl_module, "last_correctness_path", None)
            if path is None:
                return None
        _log(f"D_correct from {path}")
        return read_correctness(path)

    # --------------------------------------------------------------- entry point
    def run_attribution(self, trainer: Any, pl_module: L.LightningModule, datamodule: Any) -> None:
        from infra_pl.influence import measurement_directions

        factors = trainer.attribution_state["factors"]
        out = Path(self.output_dir) if self.output_dir else trainer.attribution_dir() / "scores"
        model = self._model(pl_module)
        tracked = self._tracked(model, factors)
        sets = select_measurement_sets(
            datamodule.eval_examples,
            self._correctness(trainer, pl_module, datamodule),
            n=self.n_correct,
            min_correct=self.min_correct,
            seed=self.seed,
            fallback=self.fallback,
        )
        info = {name: s.info() for name, s in sets.items()}
        for name, s in sets.items():
            label = " (FALLBACK: reference answers of all items)" if s.fallback else ""
            _log(f"measurement '{name}': {s.n_used} items used, {s.n_available} correct available{label}")

        # Measurement gradients ∇f, one pass per measurement.
        gradients = {}
        for name, s in sets.items():
            self._phase_data = {"tracked": tracked, "sum": None, "count": 0, "f_sum": 0.0}
            trainer.run_attribution_pass(MEASURE, pl_module, datamodule, split="eval", batch_size=self.batch_size, indices=s.indices)
            count = self._phase_data["count"]
            gradients[name] = {k: v / count for k, v in self._phase_data["sum"].items()}
            info[name]["f_value"] = self._phase_data["f_sum"] / count
        directions = measurement_directions(factors, gradients)
        names = list(directions.names)
        key = _directions_key(directions, factors)

        # Instance scores, resumable.
        all_indices = list(range(len(datamodule.train_examples)))
        scored = self._score_training_set(trainer, pl_module, datamodule, tracked, directions, out / "instance_parts", key, "instance")
        instance_df = _instance_table(datamodule, scored, names)
        meta = {"measurements": info, "sign": "positive = up-weighting the example raises f", "directions_key": key}
        if trainer.is_global_zero:
            path = write_table(out / "instance_scores.parquet", instance_df, meta)
            trainer.attribution_state["instance_scores_path"] = path
            (out / "measurement_info.json").write_text(json.dumps(info, indent=2))
        trainer.attribution_state.update({"instance_scores": instance_df, "measurement_info": info, "directions": directions})
        if self.pairwise:
            self._pairwise(trainer, pl_module, datamodule, tracked, factors, sets, out, meta)

        # Token scores for the top-K examples per measurement (or all).
        if self.token_all:
            top = all_indices
        else:
            top = sorted({int(i) for n in names for i in instance_df.nlargest(self.token_top_k, f"score_{n}")["index"]})
        self._phase_data = {"tracked": tracked, "directions": directions.to(pl_module.device), "rows": [], "names": names,
                            "tokenizer": datamodule.tokenizer, "examples": datamodule.train_examples, "check": []}
        trainer.run_attribution_pass(TOKENS, pl_module, datamodule, split="train", batch_size=self.batch_size, indices=top)
        token_df = pd.DataFrame(self._phase_data["rows"])
        _check_token_sums(token_df, instance_df, names)
        if trainer.is_global_zero:
            trainer.attribution_state["token_scores_path"] = write_table(out / "token_scores.parquet", token_df, meta)
        trainer.attribution_state["token_scores"] = token_df

        # Sentence scores for the top examples (rank 0, direct: a small set).
        if trainer.is_global_zero and self.sentence_top_k > 0:
            sentence_df = self._sentence_scores(pl_module, datamodule, tracked, directions, instance_df, names)
            trainer.attribution_state["sentence_scores"] = sentence_df
            trainer.attribution_state["sentence_scores_path"] = write_table(out / "sentence_scores.parquet", sentence_df, meta)
        trainer.attribution_state["scores_dir"] = out

    def _score_training_set(self, trainer, pl_module, datamodule, tracked, directions, parts: Path, key: str, what: str) -> pd.DataFrame:
        """Scores of every training example for ``directions`` (columns ``score_<name>``), resumable."""
        all_indices = list(range(len(datamodule.train_examples)))
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
            }
            trainer.run_attribution_pass(INSTANCE, pl_module, datamodule, split="train", batch_size=self.batch_size, indices=todo)
            trainer.strategy.barrier()
        return read_parts(parts, key).to_pandas().drop_duplicates("index").set_index("index").sort_index()

    def _pairwise(self, trainer, pl_module, datamodule, tracked, factors, sets, out: Path, meta: dict[str, Any]) -> None:
        """Per-query scores (n_query x n_train) for the D_correct items, in long format."""
        from infra_pl.influence import query_directions

        queries = sorted({i for s in sets.values() for i in s.indices})
        loader = datamodule.attribution_dataloader("eval", self.batch_size, queries)
        order = [int(i) for batch in loader for i in batch["index"]]  # query_k = k-th item in loader order
        directions = query_directions(self._model(pl_module), loader, factors, tracked)
        key = _directions_key(directions, factors)
        scored = self._score_training_set(trainer, pl_module, datamodule, tracked, directions, out / "pairwise_parts", key, "pairwise")
        rows = []
        for k, eval_index in enumerate(order):
            query = datamodule.eval_examples[eval_index]
            column = scored[f"score_query_{k}"]
            for train_index, value in column.items():
                rows.append({"query_id": query["id"], "query_domain": query["domain"],
                             "train_id": datamodule.train_examples[int(train_index)]["id"], "score": float(value)})
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

        model, data = self._model(pl_module), self._phase_data
        with torch.enable_grad():
            if phase == MEASURE:
                size = int(batch["input_ids"].shape[0])
                grad = measurement_gradient(model, [batch], data["tracked"])
                summed = {k: v * size for k, v in grad.items()}
                data["sum"] = summed if data["sum"] is None else {k: data["sum"][k] + v for k, v in summed.items()}
                data["count"] += size
                with torch.no_grad():
                    data["f_sum"] += float(-pl_module.per_example_loss(batch).sum()) if hasattr(pl_module, "per_example_loss") else 0.0
            elif phase == INSTANCE:
                scores = instance_scores(model, batch, data["directions"], data["tracked"]).detach().cpu()
                rows = [
                    {"index": int(i), **{f"score_{n}": float(scores[r, m]) for m, n in enumerate(data["names"])}}
                    for r, i in enumerate(batch["index"].tolist())
                ]
                data["writer"].add(rows)
            else:
                self._token_rows(model, batch)

    def on_predict_end(self, trainer: Any, pl_module: L.LightningModule) -> None:
        phase = getattr(trainer, "attribution_phase", None)
        if phase == INSTANCE:
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
        scores = token_scores(model, batch, data["directions"], data["tracked"]).detach().cpu()  # [M, B, T-1]
        targets = batch["labels"][:, 1:].cpu()
        tokenizer = data["tokenizer"]
        for row, index in enumerate(batch["index"].tolist()):
            example_id = data["examples"][index]["id"]
            positions = (targets[row] != -100).nonzero().flatten().tolist()
            pieces = [tokenizer.decode([int(targets[row, p])]) for p in positions]
            for m, name in enumerate(data["names"]):
                for p, piece in zip(positions, pieces):
                    data["rows"].append(
                        {"id": example_id, "index": index, "measurement": name, "position": p, "token": piece, "score": float(scores[m, row, p])}
                    )

    # ----------------------------------------------------------------- sentences
    def _sentence_scores(self, pl_module, datamodule, tracked, directions, instance_df, names) -> pd.DataFrame:
        from infra_pl.data.sentences import split_sentences
        from infra_pl.influence import sentence_scores

        model = self._model(pl_module)
        dirs = directions.to(pl_module.device)
        chosen: dict[int, list[str]] = {}
        for name in names:
            for index in instance_df.nlargest(self.sentence_top_k, f"score_{name}")["index"]:
                chosen.setdefault(int(index), []).append(name)
        rows = []
        for index, measured in chosen.items():
            example = datamodule.train_examples[index]
            messages = example["messages"]
            turn = max(i for i, msg in enumerate(messages) if msg["role"] == "assistant")
            sentences = [s for s in split_sentences(messages[turn]["content"]) if s.kind != "marker"]
            if not sentences:
                continue
            result = sentence_scores(
                model, datamodule.tokenizer, messages, sentences, dirs, tracked,
                max_length=datamodule.max_length, assistant_turn_index=turn,
            )
            labels = _sentence_labels(example, sentences)
            for m, name in enumerate(names):
                for k, sentence in enumerate(sentences):
                    rows.append(
                        {
                            "id": example["id"],
                            "index": index,
                            "measurement": name,
                            "top_for": ",".join(measured),
                            "sentence_index": k,
                            "text": sentence.text,
                            "kind": sentence.kind,
                            "behaviours": labels[k],
                            "score_removal": float(result.removal[k, m]),
                            "score_token_sum": float(result.token_sum[k, m]) if result.token_sum is not None else float("nan"),
                            "n_tokens": len(result.spans[k]),
                        }
                    )
        return pd.DataFrame(rows)


def _sentence_labels(example: dict[str, Any], sentences: list[Any]) -> list[list[str]]:
    """Behaviour labels per sentence: the data's own labels when it has them, else the rule tagger."""
    stored = example.get("sentence_labels")
    if stored:
        by_text: dict[str, list[str]] = {}
        for item in stored:
            by_text.setdefault(item["text"], list(item.get("behaviours", [])))
        if all(s.text in by_text for s in sentences):
            return [by_text[s.text] for s in sentences]
    try:
        from infra_pl.data.behaviours import tag_sentence
    except ImportError:
        return [[] for _ in sentences]
    return [sorted(tag_sentence(s.text)) for s in sentences]


def _directions_key(directions: Any, factors: Any) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(list(directions.names)).encode())
    digest.update(str(factors.model_fingerprint).encode())
    for name in sorted(directions.per_module):
        tensor = directions.per_module[name].detach().double().cpu()
        digest.update(f"{name}:{tensor.sum().item():.10e}:{tensor.abs().sum().item():.10e}".encode())
    return digest.hexdigest()[:20]


def _instance_table(datamodule: Any, scored: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    rows = []
    features = {f["index"]: f for f in datamodule._train_features}
    for index, example in enumerate(datamodule.train_examples):
        if index not in scored.index:
            continue
        feature = features.get(index)
        row = {
            "id": example["id"],
            "index": index,
            "domain": example["domain"],
            "source": example["source"],
            "category": example["category"],
            "difficulty": example["difficulty"],
            "n_target_tokens": sum(1 for label in feature["labels"][1:] if label != -100) if feature else 0,
        }
        row.update({f"behaviour_{b}": int(example["behaviours"].get(b, 0)) for b in BEHAVIOURS})
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
