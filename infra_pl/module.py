"""``SFTModule``: supervised fine-tuning of a causal LM on reasoning traces, and its evaluation.

Validation does two things: the teacher-forced loss on the reference answers (cheap, every
validation epoch), and greedy generation scored for correctness (costly; always in
``validate``, optional during ``fit``). Correctness is written per example because the
attribution measurement is defined on the correctly answered items.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR

from infra_pl.ekfac.loss import sample_target_labels
from infra_pl.eval.sandbox import SandboxLimits
from infra_pl.eval.scoring import Verdict, score_generations
from infra_pl.log_likelihood import mean_token_nll, per_example_nll, target_log_probs
from infra_pl.model_builder import LoraOptions, apply_lora, build_causal_lm
from infra_pl.schedule import ProgressClock, warmup_cosine

DOMAINS = ("math", "code")


class SFTModule(L.LightningModule):
    """Causal-LM SFT with optional LoRA, warmup+cosine AdamW, and generation-based evaluation.

    Args:
        name_or_path: local path (or hub name where reachable) of a pretrained causal LM. If
            unset, the model is built from ``model_config`` with random init (the demo).
        model_config: ``transformers`` config fields, including ``model_type`` (e.g. ``llama``,
            ``qwen2``, ``gpt2``); default: the small demo Llama. The vocabulary size and special
            token ids come from the tokenizer.
        dtype: parameter dtype: float32, bfloat16 or float16.
        attn_implementation: ``sdpa`` or ``eager``.
        init_seed: seed of the random init (so LoRA adapters reload onto identical base weights).
        lora: enable LoRA adapters with these settings (only adapters train and are saved).
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup_fraction: share of the run spent in linear warmup.
        min_lr_ratio: final learning rate as a fraction of the peak.
        time_budget_s: opt-in wall-clock budget. Default (null): the warmup + cosine schedule runs
            over a fixed number of optimizer steps (``trainer.max_steps``, or the steps of
            ``max_epochs``), so a seed and a thread count give the same model on any machine,
            however busy. If set, the LR schedule runs on wall-clock time too (progress = max of
            step and time fractions) and training stops when the budget is used, so the LR always
            anneals, but how many steps fit, and so the model, depends on the machine's load; the
            steps taken are logged and recorded (``fit_summary.json`` next to the checkpoints, and
            ``infra_pl_fit`` in every checkpoint).
        generate_during_fit: also generate and score answers in validation epochs during fit.
        max_new_tokens: generation length limit.
        correctness_file: where ``validate`` writes per-example correctness (JSONL); default
            ``<log_dir>/correctness.jsonl``.
        sandbox: limits for running generated code.
        sandbox_workers: code checks run in parallel.
        tokenizer: tokenizer path, only needed when no ReasoningDataModule provides one.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        init_seed: int = 0,
        lora: LoraOptions | None = None,
        learning_rate: float = 3e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.02,
        time_budget_s: float | None = None,
        generate_during_fit: bool = False,
        max_new_tokens: int = 256,
        correctness_file: str | None = None,
        sandbox: SandboxLimits | None = None,
        sandbox_workers: int = 2,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: Any = None
        self.tokenizer: Any = None
        self.lora = lora
        self.sandbox_limits = sandbox or SandboxLimits()
        self._clock: ProgressClock | None = None
        self._planned_steps: int | None = None
        self._fit_started: float | None = None
        self.fit_summary: dict[str, Any] | None = None
        self._verdicts: list[Verdict] = []
        self.last_correctness_path: Path | None = None
        if lora is not None:
            self.strict_loading = False  # adapter-only checkpoints omit the frozen base weights

    # ------------------------------------------------------------------ model
    def _resolve_tokenizer(self) -> Any:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            return datamodule.tokenizer
        path = self.hparams.tokenizer or self.hparams.name_or_path
        if path:
            from infra_pl.data.tokenizer import load_tokenizer

            return load_tokenizer(path)
        raise RuntimeError(
            "SFTModule needs a tokenizer: use ReasoningDataModule (it provides one) or pass tokenizer=<path>"
        )

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.tokenizer = self._resolve_tokenizer()
        model = build_causal_lm(
            name_or_path=self.hparams.name_or_path,
            model_config=self.hparams.model_config,
            vocab_size=len(self.tokenizer),
            special_token_ids={
                "pad_token_id": self.tokenizer.pad_token_id,
                "bos_token_id": self.tokenizer.bos_token_id,
                "eos_token_id": self.tokenizer.eos_token_id,
            },
            dtype=self.hparams.dtype,
            attn_implementation=self.hparams.attn_implementation,
            init_seed=self.hparams.init_seed,
        )
        if self.lora is not None:
            model = apply_lora(model, self.lora)
        self.model = model
        # Decided here, before any FSDP wrapping flattens every parameter to a 1-D shard.
        self._no_decay = {f"model.{n}" for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n.lower()}
        vocab = int(model.get_input_embeddings().weight.shape[0])
        self.train_token_acc = torchmetrics.classification.MulticlassAccuracy(
            num_classes=vocab, ignore_index=-100, average="micro"
        )
        self.val_token_acc = self.train_token_acc.clone()
        self.val_loss = torchmetrics.MeanMetric()
        self.val_accuracy = torch.nn.ModuleDict({d: torchmetrics.MeanMetric() for d in DOMAINS})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    # ------------------------------------- what attribution needs from a module
    # (infra_pl.protocol.AttributableModule and its optional parts)
    def attribution_model(self) -> torch.nn.Module | None:
        """The network the attribution callbacks hook: the HF model (None until configure_model)."""
        return self.model

    def attribution_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits [B, T, V] for token scores; targets are ``batch["labels"][:, 1:]``."""
        return self(batch["input_ids"], batch.get("attention_mask"))

    def per_example_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L(z) for each sequence of the batch: summed NLL over assistant tokens, shape [B]."""
        return per_example_nll(self(batch["input_ids"], batch.get("attention_mask")), batch["labels"])

    def sampled_per_example_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """L(z) with every target token drawn from the model's prediction (true Fisher), shape [B]."""
        logits = self(batch["input_ids"], batch.get("attention_mask"))
        return per_example_nll(logits, sample_target_labels(logits.detach(), batch["labels"]))

    def token_log_probs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(z_t | z_<t) per target position and its mask, each [B, T-1]."""
        return target_log_probs(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Attribution passes are predict runs whose work happens in the callbacks' batch hooks."""
        return None

    # --------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss, n_tokens = mean_token_nll(logits, batch["labels"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.global_step} (batch {batch_idx}); "
                "lower the learning rate or check the data for empty targets"
            )
        self.train_token_acc(logits[:, :-1].argmax(-1), batch["labels"][:, 1:])
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/perplexity", torch.exp(loss.detach()), batch_size=batch_size)
        self.log("train/token_accuracy", self.train_token_acc, batch_size=batch_size)
        self.log("train/target_tokens", n_tokens.float(), reduce_fx="sum", batch_size=batch_size)
        return loss

    def on_train_start(self) -> None:
        self._fit_started = time.monotonic()
        if self._clock is not None:
            self._clock.start()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        clock = self._clock
        if clock is not None and clock.time_budget_s and clock.progress(self.global_step) >= 1.0:
            if not self.trainer.should_stop and self.global_step < clock.total_steps and self.trainer.is_global_zero:
                planned = f" of {self._planned_steps} planned" if self._planned_steps else ""
                print(f"[infra-pl] fit: wall-clock budget of {clock.time_budget_s} s (model.time_budget_s) used up after "
                      f"{self.global_step} optimizer steps{planned}; stopping here (the learning rate has annealed)",
                      file=sys.stderr, flush=True)
            self.trainer.should_stop = True  # time budget used: the LR has fully annealed

    def configure_optimizers(self) -> dict[str, Any]:
        from infra_pl.ekfac.fingerprint import canonical_name

        decay, no_decay = [], []
        recorded = getattr(self, "_no_decay", None)
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            skip = canonical_name(name) in recorded if recorded is not None else param.ndim < 2 or "norm" in name.lower()
            (no_decay if skip else decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.learning_rate,
            betas=tuple(self.hparams.betas),
        )
        total = self.trainer.estimated_stepping_batches
        self._planned_steps = int(total) if 0 < total < float("inf") else None
        if total == float("inf") or total <= 0:
            if not self.hparams.time_budget_s:
                raise ValueError("set trainer.max_steps/max_epochs or model.time_budget_s so the LR schedule has an end")
            total = 10**9
        self._clock = ProgressClock(int(total), self.hparams.time_budget_s)
        clock, warmup, floor = self._clock, self.hparams.warmup_fraction, self.hparams.min_lr_ratio
        scheduler = LambdaLR(optimizer, lambda step: warmup_cosine(clock.progress(step), warmup, floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------- evaluation
    def _generating(self) -> bool:
        return self.trainer.state.fn == "validate" or self.hparams.generate_during_fit

    @torch.no_grad()
    def generate_answers(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[str]:
        """Greedy continuations of left-padded prompts, decoded without special tokens."""
        was_training = self.model.training
        self.model.eval()
        # SDPA's fused kernels mis-handle fully masked rows of left padding; the math path is exact.
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            output = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=self.hparams.max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        self.model.train(was_training)
        new_tokens = output[:, prompt_ids.shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        loss, n_tokens = mean_token_nll(logits, batch["labels"])
        self.val_loss.update(loss, weight=n_tokens)
        self.val_token_acc(logits[:, :-1].argmax(-1), batch["labels"][:, 1:])
        if not self._generating():
            return
        examples = [self.trainer.datamodule.eval_examples[int(i)] for i in batch["index"]]
        texts = self.generate_answers(batch["prompt_input_ids"], batch["prompt_attention_mask"])
        texts = [_strip_special(t, self.tokenizer) for t in texts]
        verdicts = score_generations(examples, texts, self.sandbox_limits, self.hparams.sandbox_workers)
        for verdict in verdicts:
            if verdict.domain in self.val_accuracy:
                self.val_accuracy[verdict.domain].update(torch.tensor(float(verdict.correct), device=self.device))
        self._verdicts.extend(verdicts)

    def on_validation_epoch_start(self) -> None:
        self._verdicts = []
        if self._generating() and self.trainer.is_global_zero:
            from infra_pl.eval.sandbox import announce_isolation

            announce_isolation()  # once per process: which isolation layers generated code runs without here

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/perplexity", torch.exp(loss))
        self.log("val/token_accuracy", self.val_token_acc.compute())
        self.val_loss.reset()
        self.val_token_acc.reset()
        if not self._generating():
            return
        for domain, metric in self.val_accuracy.items():
            if metric.update_count:
                self.log(f"val/accuracy_{domain}", metric.compute())
            metric.reset()
        self._write_correctness()

    def _write_correctness(self) -> None:
        from infra_pl.ekfac.fingerprint import weights_fingerprint
        from infra_pl.fsdp import full_weights

        with full_weights(self.trainer.strategy):  # every rank: gathers FSDP shards (no-op otherwise)
            fingerprint = weights_fingerprint(self.attribution_model())  # lets attribute check the file is its weights
        rows = [{**v.to_dict(), "weights_fingerprint": fingerprint} for v in self._verdicts]
        if self.trainer.world_size > 1:
            gathered: list[list[dict[str, Any]]] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, rows)
            by_id = {row["id"]: row for shard in gathered for row in shard}  # DDP pads with duplicates
            rows = list(by_id.values())
        if not self.trainer.is_global_zero:
            return
        path = Path(self.hparams.correctness_file or Path(self.trainer.log_dir or ".") / "correctness.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        self.last_correctness_path = path

    # ------------------------------------------------------- what fit did
    def current_fit_summary(self) -> dict[str, Any]:
        """How this fit was scheduled and how many optimizer steps it has taken so far.

        With a wall-clock budget the step count is the one thing that tells two runs' models
        apart, so it goes into every checkpoint and ``fit_summary.json``.
        """
        budget = self.hparams.time_budget_s
        elapsed = time.monotonic() - self._fit_started if self._fit_started is not None else None
        clock = self._clock
        seed = os.environ.get("PL_GLOBAL_SEED", "")  # set by seed_everything
        return {
            "schedule": "time_budget" if budget else "steps",
            "optimizer_steps": int(self.global_step),
            "planned_steps": self._planned_steps,
            "time_budget_s": budget,
            "stopped_by_time_budget": bool(
                budget and clock is not None and self._planned_steps != self.global_step
                and clock.progress(self.global_step) >= 1.0
            ),
            "train_seconds": round(elapsed, 3) if elapsed is not None else None,
            "seed": int(seed) if seed.lstrip("-").isdigit() else None,
            "torch_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        }

    def on_train_end(self) -> None:
        summary = self.current_fit_summary()
        self.fit_summary = summary
        if summary["schedule"] == "time_budget":
            used = " used up" if summary["stopped_by_time_budget"] else ""
            how = f"wall-clock budget {summary['time_budget_s']} s{used}"
        else:
            how = f"step schedule of {summary['planned_steps']} steps"
        rank_zero_info(
            f"[infra-pl] fit took {summary['optimizer_steps']} optimizer steps in {summary['train_seconds']} s "
            f"({how}; seed {summary['seed']}, {summary['torch_threads']} torch thread(s))"
        )
        callback = self.trainer.checkpoint_callback
        # on every rank: trainer.log_dir is a collective under DDP/FSDP (rank 0 alone would wait forever)
        folder = getattr(callback, "dirpath", None) or self.trainer.log_dir or self.trainer.default_root_dir
        if not self.trainer.is_global_zero:
            return
        path = Path(folder) / "fit_summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    # ------------------------------------------------------------ checkpoints
    def _check_checkpoint_shapes(self, state: dict[str, torch.Tensor]) -> None:
        """Refuse a checkpoint whose tensors do not fit, naming the likely cause (another tokenizer)."""
        problems = _shape_problems(state, self)
        if not problems:
            return
        hint = ""
        if any("embed_tokens" in p or "lm_head" in p or "wte" in p for p in problems):
            hint = (
                " The vocabulary size differs: the checkpoint was trained with another tokenizer (for the demo: "
                "other data settings or generator version, so a different locally trained tokenizer). Use the "
                "same data settings as the run that wrote the checkpoint, or train again."
            )
        raise ValueError(f"checkpoint does not match the model ({len(problems)} tensor(s)): {problems[:3]}.{hint}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            checkpoint["infra_pl_fit"] = self.current_fit_summary()
        if self.lora is None:
            return
        trainable = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["infra_pl_adapter_only"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_checkpoint_shapes(checkpoint["state_dict"])
        if self.lora is None:
            return
        trainable = {f"model.{name}" for name, p in self.model.named_parameters() if p.requires_grad}
        missing = trainable - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"LoRA checkpoint lacks {len(missing)} adapter weight(s), e.g. {sorted(missing)[:3]}")
        if not checkpoint.get("infra_pl_adapter_only"):
            warnings.warn("loading a full checkpoint into a LoRA module; base weights come from the checkpoint")


def _shape_problems(state: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    own = module.state_dict()
    return [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and tuple(own[key].shape) != tuple(value.shape)
    ]


def _strip_special(text: str, tokenizer: Any) -> str:
    """Cut the generation at the end-of-turn token and drop padding."""
    end = tokenizer.eos_token
    if end and end in text:
        text = text[: text.index(end)]
    pad = tokenizer.pad_token
    return text.replace(pad, "") if pad else text


# Checkpoints store these option dataclasses in their hyperparameters; allow-list them so
# `weights_only` checkpoint loading (torch's default) accepts them.
torch.serialization.add_safe_globals([LoraOptions, SandboxLimits])
