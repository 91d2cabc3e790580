"""The demo data of an LDS run: training set, evaluation items and pre-training pool, tokenised.

Why the ``ReasoningDataModule`` is used only to load and tokenise: retrains need batches of
arbitrary subsets in a fixed order, which is simplest on plain feature lists; loading, schema
checks, the demo tokenizer and the chat-template masking stay exactly those of ``fit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from torch.utils.data import DataLoader

from infra_pl.data.chat_encoding import collate_padded, tokenize_chat
from infra_pl.data.datamodule import DemoOptions, ReasoningDataModule
from infra_pl.data.demo import ensure_demo
from infra_pl.data.schema import DataError
from infra_pl.data.sources import Source, load_source
from infra_pl.lds.config import LDSSetting

Feature = dict[str, Any]


@dataclass
class LDSData:
    """Examples and their tokenised features; ``features[i]["index"] == i`` in every split."""

    tokenizer: Any
    train_examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]]
    pretrain_examples: list[dict[str, Any]]
    train_features: list[Feature]
    eval_features: list[Feature]
    pretrain_features: list[Feature]

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def batches(self, features: Sequence[Feature], batch_size: int) -> DataLoader:
        """Unshuffled padded batches of ``features`` (for scoring and measuring, not training)."""
        return DataLoader(
            list(features),
            batch_size=batch_size,
            shuffle=False,
            collate_fn=lambda items: collate_padded(items, self.pad_token_id),
        )

    def eval_features_at(self, indices: Sequence[int]) -> list[Feature]:
        return [self.eval_features[i] for i in indices]


def _tokenize(tokenizer: Any, examples: list[dict[str, Any]], max_length: int, split: str) -> list[Feature]:
    features: list[Feature] = []
    for index, example in enumerate(examples):
        tokenized = tokenize_chat(tokenizer, example["messages"], max_length)
        if tokenized is None:
            raise DataError(
                f"{split} example {example['id']} has no assistant token within max_length={max_length}; "
                "raise max_length (an LDS run needs every example, so none is dropped silently)"
            )
        features.append(
            {
                "input_ids": tokenized.input_ids,
                "labels": tokenized.labels,
                "prompt_ids": tokenized.prompt_ids,
                "index": index,
            }
        )
    return features


def load_lds_data(setting: LDSSetting, cache_dir: str | Path) -> LDSData:
    """Generate (or read from ``cache_dir``) the demo of ``setting`` and tokenise every split."""
    demo = DemoOptions(
        seed=setting.demo_seed, n_train=setting.n_train, n_eval=setting.n_eval, n_pool=max(setting.n_pretrain, 1)
    )
    module = ReasoningDataModule(
        cache_dir=str(cache_dir),
        demo=demo,
        max_length=setting.max_length,
        tokenizer_vocab_size=setting.tokenizer_vocab_size,
    )
    module.prepare_data()
    module.setup()
    pretrain: list[dict[str, Any]] = []
    if setting.n_pretrain:
        files = ensure_demo(
            Path(cache_dir) / "demo", seed=demo.seed, n_train=demo.n_train, n_eval=demo.n_eval, n_pool=demo.n_pool
        )
        pretrain = load_source(Source("demo:pool"), files)[: setting.n_pretrain]
    tokenizer = module.tokenizer
    return LDSData(
        tokenizer=tokenizer,
        train_examples=module.train_examples,
        eval_examples=module.eval_examples,
        pretrain_examples=pretrain,
        train_features=_tokenize(tokenizer, module.train_examples, setting.max_length, "train"),
        eval_features=_tokenize(tokenizer, module.eval_examples, setting.max_length, "eval"),
        pretrain_features=_tokenize(tokenizer, pretrain, setting.max_length, "pretrain"),
    )


def example_text(example: dict[str, Any]) -> str:
    """User and assistant turns of an example, joined (what a text-similarity baseline compares)."""
    return "\n".join(m["content"] for m in example["messages"] if m["role"] in ("user", "assistant"))


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
