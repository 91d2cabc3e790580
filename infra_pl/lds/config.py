"""The retrain setting of an LDS run, and the hash that names its output folder.

Why a frozen, hashed setting: every retrain result on disk is only comparable with others made
under exactly the same data, model, initialisation and optimiser recipe. The setting's hash is
the output sub-folder, so changing any of them can never mix results, and re-running the same
setting resumes (finished retrains are read back, not redone).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from infra_pl.model_builder import DEMO_MODEL_CONFIG


@dataclass(frozen=True)
class TrainRecipe:
    """A fixed-length AdamW run with the SFT recipe of ``SFTModule`` (warmup + cosine, clipping).

    A fixed number of optimiser steps (never a wall-clock budget) is what makes two runs on the
    same subset with the same seed identical, whatever the machine load.

    Args:
        steps: optimiser steps (batches); epochs repeat as needed, each reshuffled from the seed.
        learning_rate: peak AdamW learning rate.
        batch_size: sequences per step (length-grouped batches, as ``fit`` uses).
        weight_decay: AdamW weight decay (not on biases and norms).
        betas: AdamW betas.
        warmup_fraction: share of the steps spent in linear warmup.
        min_lr_ratio: final learning rate as a fraction of the peak.
        gradient_clip: max global gradient norm (0 disables clipping).
    """

    steps: int
    learning_rate: float
    batch_size: int = 16
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.02
    gradient_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def _demo_model() -> dict[str, Any]:
    return dict(DEMO_MODEL_CONFIG)


@dataclass(frozen=True)
class LDSSetting:
    """What fixes the outcome of one retrain: data, model, initialisation, recipes, measurement.

    The demo mixture is generated with ``n_train`` training examples (the set that subsets are
    drawn from and that attribution scores), ``n_eval`` evaluation items per domain, and a
    disjoint pool from which the first ``n_pretrain`` examples pre-train the shared base model.
    Every retrain fine-tunes that base (same initialisation) with ``finetune``; the model trained on
    the full training set with training seed 0 is the one attribution explains.

    Args:
        demo_seed: seed of the demo generator.
        n_train: training examples (math + code, half each).
        n_eval: evaluation items per domain.
        n_pretrain: pool examples used to pre-train the base model (0: fine-tune the random init).
        max_length: longest sequence in tokens.
        tokenizer_vocab_size: vocabulary of the locally trained demo tokenizer.
        model_config: ``transformers`` config of the model (default: the demo Llama).
        init_seed: seed of the random initialisation.
        pretrain: recipe of the base model's pre-training (ignored when ``n_pretrain`` is 0).
        finetune: recipe of every (re)training on the training set or a subset of it.
        n_correct: D_correct size per domain (paper Eq. 6).
        min_correct: fewer correctly answered items than this use the fallback.
        fallback: ``"reference"``: measure on all items' reference answers when D_correct is too
            small (labelled in every output); ``None``: stop with an error instead.
        max_new_tokens: greedy generation length when checking correctness.
        measurement_seed: seed of the D_correct draw.
    """

    demo_seed: int = 0
    n_train: int = 400
    n_eval: int = 100
    n_pretrain: int = 1000
    max_length: int = 320
    tokenizer_vocab_size: int = 1024
    model_config: dict[str, Any] = field(default_factory=_demo_model)
    init_seed: int = 0
    pretrain: TrainRecipe = TrainRecipe(steps=300, learning_rate=5e-3)
    finetune: TrainRecipe = TrainRecipe(steps=60, learning_rate=2e-3)
    n_correct: int = 100
    min_correct: int = 10
    fallback: str | None = "reference"
    max_new_tokens: int = 200
    measurement_seed: int = 0

    def __post_init__(self) -> None:
        if self.n_train < 2:
            raise ValueError(f"n_train must be >= 2, got {self.n_train}")
        if self.n_eval < 1:
            raise ValueError(f"n_eval must be >= 1, got {self.n_eval}")
        if self.n_pretrain < 0:
            raise ValueError(f"n_pretrain must be >= 0, got {self.n_pretrain}")
        if self.fallback not in (None, "reference"):
            raise ValueError(f"fallback must be None or 'reference', got {self.fallback!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """Stable 12-hex-digit hash of every field (the output sub-folder's name)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LDSSetting":
        data = dict(data)
        for key in ("pretrain", "finetune"):
            if isinstance(data.get(key), dict):
                recipe = dict(data[key])
                recipe["betas"] = tuple(recipe.get("betas", (0.9, 0.98)))
                data[key] = TrainRecipe(**recipe)
        return cls(**data)
