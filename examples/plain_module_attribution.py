"""Example 1: EK-FAC factors and influence scores for YOUR LightningModule and DataModule.

Nothing here uses infra-pl's SFTModule or ReasoningDataModule: a plain LightningModule wraps a
Hugging Face GPT-2 on a toy text task (``copy a b c -> a b c`` and ``reverse a b c -> c b a``),
trained with a plain Lightning loop. To get attribution it implements the protocol of
``infra_pl.protocol``:

* module: ``attribution_model()`` (the GPT-2 to hook), ``per_example_loss(batch)`` (summed NLL of
  each sequence's answer tokens, [B]) and ``attribution_logits(batch)`` ([B, T, V], for token
  scores; the true-Fisher label sampling is derived from it);
* datamodule: ``attribution_ids(split)``, ``attribution_dataloader(split, batch_size, indices)``
  (unshuffled dict batches carrying ``index``) and ``attribution_metadata(split)`` (a ``domain``
  column, so the report can group by task).

The measurement is the built-in ``TargetLogProb`` (plain template): log p(reversed letters |
"reverse ... ->") over held-out prompts. Which training examples raise it? The reverse ones.

Run:  python examples/plain_module_attribution.py --out runs/example_plain
Tests call :func:`main` with tiny sizes (``tests/extension/test_examples.py``).
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

LETTERS = list("abcdefgh")
TASKS = ("copy", "reverse")
SPECIAL = ["<pad>", "<bos>", "<eos>", "->", *TASKS]


# ------------------------------------------------------------------ the toy task
def answer(task: str, letters: Sequence[str]) -> list[str]:
    return list(letters) if task == "copy" else list(reversed(letters))


def make_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` toy examples, half per task: prompt ``<task> x y z ->``, answer the copied/reversed letters."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        task = TASKS[i % 2]
        letters = [rng.choice(LETTERS) for _ in range(rng.randint(3, 5))]
        examples.append({"id": f"{task}-{i}", "task": task, "prompt": f"{task} {' '.join(letters)} ->",
                         "answer": " " + " ".join(answer(task, letters))})
    return examples


def build_tokenizer() -> Any:
    """A word-level Hugging Face tokenizer over the toy vocabulary (built in memory, nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + LETTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def encode(tokenizer: Any, example: dict[str, Any], index: int) -> dict[str, Any]:
    """``<bos> prompt answer <eos>``; only the answer and <eos> are targets (labels -100 elsewhere)."""
    prompt = [tokenizer.bos_token_id, *tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]]
    target = [*tokenizer(example["answer"], add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    return {"input_ids": prompt + target, "labels": [-100] * len(prompt) + target, "index": index}


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), longest), pad_id)
    labels = torch.full((len(features), longest), -100)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "index": torch.tensor([f["index"] for f in features])}


# ------------------------------------------------------------ a plain DataModule
class ToyTextDataModule(L.LightningDataModule):
    """Copy/reverse examples, plus the three methods of ``infra_pl.protocol.AttributionData``."""

    def __init__(self, n_train: int = 64, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.tokenizer = build_tokenizer()
        self.examples = make_examples(n_train, seed)
        self.features = [encode(self.tokenizer, e, i) for i, e in enumerate(self.examples)]
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.features, batch_size=self.batch_size, shuffle=True,
                          collate_fn=lambda f: collate(f, self.tokenizer.pad_token_id))

    # --- the attribution data protocol
    def attribution_ids(self, split: str) -> list[str]:
        self._check(split)
        return [e["id"] for e in self.examples]

    def attribution_dataloader(self, split: str = "train", batch_size: int | None = None,
                               indices: list[int] | None = None) -> DataLoader:
        self._check(split)
        wanted = set(range(len(self.features))) if indices is None else set(indices)
        chosen = [f for f in self.features if f["index"] in wanted]
        return DataLoader(chosen, batch_size=batch_size or self.batch_size, shuffle=False,
                          collate_fn=lambda f: collate(f, self.tokenizer.pad_token_id))

    def attribution_metadata(self, split: str) -> list[dict[str, Any]]:
        self._check(split)
        return [{"domain": e["task"]} for e in self.examples]

    @staticmethod
    def _check(split: str) -> None:
        if split != "train":
            raise ValueError(f"ToyTextDataModule only has a train split, not {split!r}")


# ------------------------------------------------------------ a plain LightningModule
class ToyGPT2Module(L.LightningModule):
    """A GPT-2 language model trained on the toy task: no infra-pl code in its training path."""

    def __init__(self, vocab_size: int, pad_id: int, hidden: int = 32, layers: int = 2, lr: float = 3e-3, seed: int = 0):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=hidden, n_layer=layers, n_head=2,
                            bos_token_id=1, eos_token_id=2, pad_token_id=pad_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.gpt2 = GPT2LMHeadModel(config)
        self.lr = lr

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.gpt2(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

    # --- the attribution protocol (infra_pl.protocol.AttributableModule + TokenAttributable)
    def attribution_model(self) -> torch.nn.Module:
        return self.gpt2

    def attribution_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch)

    def per_example_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self(batch)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:], ignore_index=-100, reduction="none")
        return nll.sum(dim=1)  # summed over each sequence's answer tokens: [B]


# --------------------------------------------------------------------- the run
def reverse_prompts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Held-out reverse prompts and their answers (same format as training)."""
    held_out = make_examples(2 * n, seed + 1000)
    chosen = [e for e in held_out if e["task"] == "reverse"][:n]
    return ["<bos> " + e["prompt"] for e in chosen], [e["answer"] + " <eos>" for e in chosen]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/example_plain", help="run folder (factors, scores, report, logs)")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--progress-bar", action="store_true", help="show Lightning's (TQDM) progress bar in the passes")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[ToyGPT2Module, ToyTextDataModule]:
    datamodule = ToyTextDataModule(n_train=args.n_train, seed=args.seed)
    module = ToyGPT2Module(len(datamodule.tokenizer), datamodule.tokenizer.pad_token_id, args.hidden, args.layers, seed=args.seed)
    return module, datamodule


def fit(module: L.LightningModule, datamodule: L.LightningDataModule, args: argparse.Namespace) -> None:
    """Plain Lightning training (any Trainer would do; the attribution needs none of it)."""
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=args.out)
    trainer.fit(module, datamodule=datamodule)


def attribution_callbacks(args: argparse.Namespace, measurements: list[Any] | None = None, extra: list[Any] | None = None) -> list[Any]:
    from infra_pl.callbacks import AttributionReport, EKFACFactors, InfluenceScores
    from infra_pl.measurements import TargetLogProb

    if measurements is None:
        prompts, targets = reverse_prompts(args.n_prompts, args.seed)
        measurements = [TargetLogProb(name="reverse", prompts=prompts, targets=targets, template="plain")]
    callbacks = [
        EKFACFactors(fisher="true", log_spectra=False),
        InfluenceScores(measurements=measurements, token_top_k=3, sentence_top_k=0),  # sentences need chat data
        *(extra or []),
    ]
    if not args.no_report:
        callbacks.append(AttributionReport(top_k=3, n_boot=200))
    return callbacks


def attribute(module: L.LightningModule, datamodule: L.LightningDataModule, args: argparse.Namespace,
              callbacks: list[Any], logger: Any = False) -> Any:
    from infra_pl.trainer import InfraTrainer

    trainer = InfraTrainer(accelerator="cpu", devices=1, logger=logger, enable_progress_bar=args.progress_bar,
                           enable_model_summary=False, default_root_dir=args.out, callbacks=callbacks)
    return trainer.attribute(module, datamodule=datamodule)


def main(argv: Sequence[str] | None = None) -> Any:
    args = parse_args(argv)
    module, datamodule = build(args)
    fit(module, datamodule, args)
    state = attribute(module, datamodule, args, attribution_callbacks(args))
    scores = state.scores.instance_scores
    by_task = scores.groupby("domain")["score_reverse"].mean()
    print(f"mean influence on log p(reversed | reverse prompt) by training task:\n{by_task.to_string()}")
    print(f"instance scores: {state.scores.instance_scores_path}")
    return state


if __name__ == "__main__":
    main(sys.argv[1:])
