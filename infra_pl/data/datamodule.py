"""``ReasoningDataModule``: sources -> schema examples -> tokenised, masked batches.

The DataModule owns the tokenizer because the demo tokenizer is trained on the data; the
model reads ``datamodule.tokenizer`` in ``configure_model`` to size its vocabulary.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from infra_pl.curate import CurateOptions, Curation, write_curation
from infra_pl.curate import curate as apply_curation
from infra_pl.data.batching import FixedBatches, LengthGroupedBatchSampler, token_budget_batches
from infra_pl.data.chat_encoding import TruncationStats, collate_padded, tokenize_chat
from infra_pl.data.difficulty import DifficultyOptions, apply_difficulty
from infra_pl.data.exploration import remove_exploration as cut_exploration
from infra_pl.data.flip import FlipOptions, apply_flip, write_difficulty_histograms
from infra_pl.data.schema import BEHAVIOURS, DataError
from infra_pl.data.sources import Source, load_source


@dataclass
class DemoOptions:
    """Size of the embedded demo mixture (generated on first use, then cached).

    Args:
        seed: generator seed; the same seed gives byte-identical data.
        n_train: training examples (math + code).
        n_eval: evaluation items per domain.
        n_pool: larger pool of the same distribution, used by difficulty-flip resampling.
        math_fraction: share of math in the training mixture.
    """

    seed: int = 0
    n_train: int = 2000
    n_eval: int = 200
    n_pool: int = 4000
    math_fraction: float = 0.5


def _default_train() -> list[Source]:
    return [Source("demo:train")]


def _default_eval() -> list[Source]:
    return [Source("demo:eval_math"), Source("demo:eval_code")]


class TokenizedDataset(Dataset):
    """Tokenised examples; item ``index`` is the position in ``examples`` (carried into batches)."""

    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def _collate_with_prompts(features: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded teacher-forced batch plus left-padded prompts for greedy generation."""
    batch = collate_padded(features, pad_token_id, "right")
    prompts = [{"input_ids": f["prompt_ids"], "labels": f["prompt_ids"], "index": f["index"]} for f in features]
    left = collate_padded(prompts, pad_token_id, "left")
    batch["prompt_input_ids"] = left["input_ids"]
    batch["prompt_attention_mask"] = left["attention_mask"]
    return batch


class ReasoningDataModule(L.LightningDataModule):
    """Math + code reasoning data in one schema, tokenised with the chat template.

    Args:
        train: training sources (default: the embedded demo's training mixture).
        eval: evaluation sources, scored by generation in ``validate`` (default: demo math + code).
        pool: extra same-distribution sources for difficulty-flip resampling (default: the demo
            pool when every training source is a demo split; required otherwise).
        tokenizer: path of a Hugging Face tokenizer; ``None`` trains a small digit-splitting BPE on
            the training and evaluation text (cached under ``cache_dir``).
        tokenizer_vocab_size: vocabulary size of the locally trained tokenizer.
        max_length: longest sequence in tokens; longer examples are truncated (counted, warned).
        batch_size: training batch size.
        eval_batch_size: batch size for evaluation and generation.
        attribution_max_tokens: form attribution batches by padded tokens (sequences × the longest
            one) instead of a fixed count: short examples share big batches, long ones get small
            ones, so passes over mixed-length data (short MetaMathQA items next to long reasoning
            traces) run near this budget throughout. The attribution callbacks' ``batch_size``
            still caps the sequences per batch. Must be ≥ ``max_length``; ignored under DDP,
            where Lightning's distributed sampler shards fixed-size batches. ``None``: fixed size.
        group_by_length: batch training sequences of similar length (less padding; single process).
        num_workers: DataLoader worker processes.
        seed: shuffling seed.
        cache_dir: where the demo data and tokenizer are cached.
        demo: size of the embedded demo (used only by ``demo:`` sources).
        difficulty: fill the difficulty column from signals (given level, table, length quantiles),
            on train and pool together so both share one scale; ``None`` keeps the adapters' levels.
        flip: difficulty-mix change of the training set (paper §4.2): ``flip`` / ``reverse``
            resample from ``pool`` keeping size and per-domain counts, ``reweight`` samples with
            per-example weights. Before/after histograms go to the log dir (Figure 5b).
        remove_exploration: cut post-answer exploration from training traces (Appendix D ablation).
        curate: build the training mixture from instance scores of this training set
            (``infra_pl.curate``: keep the top fraction, drop the most negative, reweight by score,
            or a difficulty flip with directions derived from the scores; ``random: true`` for the
            matched random control). The rule and the selected ids go to ``curate.out_dir``.
    """

    def __init__(
        self,
        train: list[Source] | None = None,
        eval: list[Source] | None = None,
        pool: list[Source] | None = None,
        tokenizer: str | None = None,
        tokenizer_vocab_size: int = 1024,
        max_length: int = 320,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        attribution_max_tokens: int | None = None,
        group_by_length: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str = ".cache/infra_pl",
        demo: DemoOptions | None = None,
        difficulty: DifficultyOptions | None = None,
        flip: FlipOptions | None = None,
        remove_exploration: bool = False,
        curate: CurateOptions | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_sources = train if train is not None else _default_train()
        self.eval_sources = eval if eval is not None else _default_eval()
        resampling = (flip is not None and flip.mode != "reweight") or (curate is not None and curate.needs_pool)
        if flip is not None and curate is not None:
            raise DataError("data.flip and data.curate both change the training mix; use one of them per run")
        if pool is None and resampling and all(s.path.startswith("demo:") for s in self.train_sources):
            pool = [Source("demo:pool")]
        self.pool_sources = pool
        self.difficulty = difficulty
        self.flip = flip
        self.remove_exploration = remove_exploration
        self.curate = curate
        self.curation: Curation | None = None  # what data.curate did, once set up
        self.train_weights: list[float] | None = None  # per training example, set by flip mode "reweight"
        self.difficulty_summary: Any = None  # which signal gave each level (infra_pl.data.difficulty), once set up
        self.tokenizer_name = tokenizer
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        if attribution_max_tokens is not None and attribution_max_tokens < max_length:
            raise ValueError(
                f"attribution_max_tokens ({attribution_max_tokens}) must be at least max_length ({max_length}): "
                "a batch has to hold one sequence of the longest allowed length"
            )
        self.attribution_max_tokens = attribution_max_tokens
        self.group_by_length = group_by_length
        self.num_workers = num_workers
        self.seed = seed
        self.cache_dir = Path(cache_dir)
        self.demo = demo or DemoOptions()
        self.tokenizer: Any = None
        self.train_examples: list[dict[str, Any]] = []
        self.eval_examples: list[dict[str, Any]] = []
        self._train_features: list[dict[str, Any]] = []
        self._eval_features: list[dict[str, Any]] = []
        self._demo_files: dict[str, Path] | None = None
        self._ready = False

    # ----------------------------------------------------------------- loading
    def _needs_demo(self) -> bool:
        sources = [*self.train_sources, *self.eval_sources, *(self.pool_sources or [])]
        return any(s.path.startswith("demo:") for s in sources)

    def prepare_data(self) -> None:
        """Generate the demo files once (rank 0 only under DDP)."""
        if self._needs_demo():
            self._demo_files = self._ensure_demo()

    def _ensure_demo(self) -> dict[str, Path]:
        from infra_pl.data.demo import ensure_demo

        return ensure_demo(
            self.cache_dir / "demo",
            seed=self.demo.seed,
            n_train=self.demo.n_train,
            n_eval=self.demo.n_eval,
            n_pool=self.demo.n_pool,
            math_fraction=self.demo.math_fraction,
        )

    def _load(self, sources: list[Source], role: str) -> list[dict[str, Any]]:
        if not sources:
            raise DataError(f"no {role} sources configured")
        examples: list[dict[str, Any]] = []
        for source in sources:
            examples.extend(load_source(source, self._demo_files))
        seen: set[str] = set()
        unique = []
        for example in examples:  # the same item listed in two sources is kept once
            if example["id"] not in seen:
                seen.add(example["id"])
                unique.append(example)
        return unique

    def _build_tokenizer(self) -> Any:
        if self.tokenizer_name:
            from infra_pl.data.tokenizer import load_tokenizer

            return load_tokenizer(self.tokenizer_name)
        from infra_pl.data.tokenizer import cached_demo_tokenizer

        return cached_demo_tokenizer(
            self.train_examples + self.eval_examples, self.cache_dir, vocab_size=self.tokenizer_vocab_size
        )

    def _tokenize_all(self, examples: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        stats = TruncationStats()
        features = []
        for index, example in enumerate(examples):
            tokenized = tokenize_chat(self.tokenizer, example["messages"], self.max_length)
            if tokenized is None:
                stats.dropped += 1
                stats.dropped_ids.append(example["id"])
                continue
            stats.truncated += int(tokenized.truncated)
            features.append(
                {
                    "input_ids": tokenized.input_ids,
                    "labels": tokenized.labels,
                    "prompt_ids": tokenized.prompt_ids,
                    "index": index,
                    "truncated": tokenized.truncated,
                }
            )
        stats.warn(split, self.max_length)
        if not features:
            raise DataError(f"the {split} split is empty after tokenisation (max_length={self.max_length})")
        return features

    def setup(self, stage: str | None = None) -> None:
        """Load, validate and tokenise everything once; later calls are no-ops (idempotent)."""
        if self._ready:
            return
        if self._needs_demo() and self._demo_files is None:
            self._demo_files = self._ensure_demo()  # non-zero ranks, or setup() called directly
        self.train_examples = self._load(self.train_sources, "train")
        self.eval_examples = self._load(self.eval_sources, "eval")
        self.train_examples = self._prepare_train(self.train_examples)
        self.tokenizer = self._build_tokenizer()
        self._train_features = self._tokenize_all(self.train_examples, "train")
        self._eval_features = self._tokenize_all(self.eval_examples, "eval")
        self._ready = True

    def _prepare_train(self, train: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Difficulty levels, the difficulty flip (or data.curate) and the exploration cut, in that order."""
        resampling = self.flip is not None and self.flip.mode != "reweight"
        if self.curate is not None and self.curate.needs_pool:
            resampling = True
            if not self.pool_sources:
                raise DataError(f"data.curate mode '{self.curate.mode}' needs data.pool sources to draw replacements from")
        if resampling and not self.pool_sources:
            raise DataError(f"data.flip mode '{self.flip.mode}' needs data.pool sources to draw replacements from")
        pool = self._load(self.pool_sources, "pool") if resampling else []
        if self.difficulty is not None:
            both, summary = apply_difficulty(train + pool, self.difficulty)
            summary.warn()
            rank_zero_info(summary.describe())
            self.difficulty_summary = summary
            train, pool = both[: len(train)], both[len(train) :]
        if self.flip is not None:
            before = train
            train, self.train_weights, text = apply_flip(train, pool, self.flip, exclude=self.eval_examples)
            rank_zero_info(text)
            self._write_flip_plot(before, train)
        if self.curate is not None:
            train = self._apply_curation(train, pool)
        if self.remove_exploration:
            cut = cut_exploration(train)
            rank_zero_info(f"exploration cut: {cut.describe()}")
            if self.train_weights is not None:  # keep weights aligned when merged examples were dropped
                kept = {e.get("parent_id", e["id"]) for e in cut.examples}
                self.train_weights = [w for e, w in zip(train, self.train_weights) if e["id"] in kept]
            train = cut.examples
        return train

    def _apply_curation(self, train: list[dict[str, Any]], pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``data.curate`` (infra_pl.curate); the rule and selected ids are written on rank 0."""
        curation = apply_curation(train, self.curate, pool=pool, exclude=self.eval_examples)
        self.curation = curation
        if curation.weights is not None:
            self.train_weights = curation.weights
        rank_zero_info(curation.describe())
        trainer = self.trainer
        if trainer is None or trainer.is_global_zero:
            root = self.curate.out_dir or Path(trainer.default_root_dir if trainer is not None else ".") / "curation"
            rule, ids = write_curation(curation, root)
            rank_zero_info(f"curation rule: {rule}; selected ids: {ids}")
        return curation.examples

    def _write_flip_plot(self, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
        """Figure 5b (before/after level histograms, PNG + JSON) into the run's log dir, rank 0 only."""
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero:
            return
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)
        labels = ("original", {"flip": "flipped", "reverse": "reverse-flipped", "reweight": "reweighted"}[self.flip.mode])
        summary = self.difficulty_summary
        png, _ = write_difficulty_histograms(
            before, after, out_dir, name=f"difficulty_{self.flip.mode}", after_weights=self.train_weights, labels=labels,
            source_note=summary.note() if summary is not None else None,
        )
        rank_zero_info(f"difficulty histograms (Figure 5b): {png}")

    # ------------------------------------------------------------- dataloaders
    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        collate = partial(collate_padded, pad_token_id=self.pad_token_id)
        if self.train_weights is not None:  # flip mode "reweight": sample by difficulty weight
            weights = [self.train_weights[f["index"]] for f in self._train_features]
            sampler = WeightedRandomSampler(
                weights, num_samples=len(weights), replacement=True, generator=torch.Generator().manual_seed(self.seed)
            )
            return DataLoader(
                TokenizedDataset(self._train_features),
                batch_size=self.batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate,
            )
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if self.group_by_length and not distributed:  # under DDP Lightning's DistributedSampler shards instead
            lengths = [len(f["input_ids"]) for f in self._train_features]
            return DataLoader(
                TokenizedDataset(self._train_features),
                batch_sampler=LengthGroupedBatchSampler(lengths, self.batch_size, self.seed),
                num_workers=self.num_workers,
                collate_fn=collate,
            )
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            TokenizedDataset(self._train_features),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=partial(collate_padded, pad_token_id=self.pad_token_id),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            TokenizedDataset(self._eval_features),
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=partial(_collate_with_prompts, pad_token_id=self.pad_token_id),
        )

    def predict_dataloader(self) -> DataLoader:
        """The training split in attribution order (``attribute`` passes its own loaders to each pass)."""
        return self.attribution_dataloader("train")

    def attribution_dataloader(
        self, split: str = "train", batch_size: int | None = None, indices: list[int] | None = None
    ) -> DataLoader:
        """Unshuffled batches of a split (or of the examples at ``indices``), for attribution passes."""
        features = {"train": self._train_features, "eval": self._eval_features}[split]
        if indices is not None:
            wanted = set(indices)
            features = [f for f in features if f["index"] in wanted]
        # Attribution sums and per-example scores do not depend on order, so batch similar lengths
        # together: less padding, faster passes. ``index`` in every batch keeps the bookkeeping.
        features = sorted(features, key=lambda f: len(f["input_ids"]))
        collate = partial(collate_padded, pad_token_id=self.pad_token_id)
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if self.attribution_max_tokens is not None and not distributed:
            batches = token_budget_batches(
                [len(f["input_ids"]) for f in features], self.attribution_max_tokens, batch_size or self.eval_batch_size
            )
            return DataLoader(
                TokenizedDataset(features), batch_sampler=FixedBatches(batches), num_workers=self.num_workers,
                collate_fn=collate,
            )
        return DataLoader(
            TokenizedDataset(features),
            batch_size=batch_size or self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate,
        )

    # ------------------------------------------- attribution data protocol
    # (infra_pl.protocol.AttributionData: what the attribution callbacks call)
    def _split_examples(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "eval"):
            raise ValueError(f"unknown split '{split}' (train or eval)")
        return self.train_examples if split == "train" else self.eval_examples

    def attribution_ids(self, split: str) -> list[str]:
        """Example ids of ``split``; position i is the ``index`` carried in that split's batches."""
        return [example["id"] for example in self._split_examples(split)]

    def attribution_metadata(self, split: str) -> list[dict[str, Any]]:
        """Per-example columns of the instance table: domain, source, category, difficulty, target
        token count and behaviour counts (the report groups by them)."""
        features = {f["index"]: f for f in (self._train_features if split == "train" else self._eval_features)}
        rows = []
        for index, example in enumerate(self._split_examples(split)):
            feature = features.get(index)
            row = {
                "domain": example["domain"],
                "source": example["source"],
                "category": example["category"],
                "difficulty": example["difficulty"],
                # A level with no named signal was stored with the data itself (the demo, a local file).
                "difficulty_source": (example.get("difficulty_source") or "given") if example["difficulty"] is not None else None,
                "n_target_tokens": sum(1 for label in feature["labels"][1:] if label != -100) if feature else 0,
                "truncated": bool(feature["truncated"]) if feature else False,
            }
            if split == "eval":
                row["reference_kind"] = example.get("reference_kind") or "full"
            # Stored counts only where the data has them; attribution tags the rest (None, never 0).
            behaviours = example.get("behaviours")
            row.update({f"behaviour_{b}": None if behaviours is None else int(behaviours.get(b, 0)) for b in BEHAVIOURS})
            rows.append(row)
        return rows

    def attribution_example(self, split: str, index: int) -> dict[str, Any]:
        """The schema record at ``index`` (chat ``messages``, sentence labels): for sentence scores."""
        return self._split_examples(split)[index]

    # ---------------------------------------------------------------- summary
    def describe(self) -> str:
        """Counts per split, domain and difficulty: what the user is about to train on."""
        lines = []
        for name, examples in (("train", self.train_examples), ("eval", self.eval_examples)):
            counts = collections.Counter((e["domain"], e["difficulty"]) for e in examples)
            per_domain = collections.Counter(e["domain"] for e in examples)
            detail = ", ".join(
                f"{domain}: {per_domain[domain]} (levels "
                + " ".join(f"{lvl}:{n}" for (d, lvl), n in sorted(counts.items(), key=lambda kv: str(kv[0])) if d == domain)
                + ")"
                for domain in sorted(per_domain)
            )
            lines.append(f"{name}: {len(examples)} examples; {detail}")
        return "\n".join(lines)


# Datamodule hyperparameters in checkpoints hold these dataclasses (see module.py).
torch.serialization.add_safe_globals([DemoOptions, Source, DifficultyOptions, FlipOptions, CurateOptions])
