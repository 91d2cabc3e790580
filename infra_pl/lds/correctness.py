"""Greedy answers of the fully trained model, scored: what D_correct (paper Eq. 6) is drawn from.

The same decoding and scoring as ``validate`` (greedy, left-padded prompts, the exact attention
path for padded rows, math answers checked, code run in the sandbox), without a Trainer.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from infra_pl.data.chat_encoding import collate_padded
from infra_pl.eval.sandbox import SandboxLimits
from infra_pl.eval.scoring import score_generations
from infra_pl.lds.data import LDSData, chunks


def _cut(text: str, tokenizer: Any) -> str:
    """Cut a generation at the end-of-turn token and drop padding, as ``validate`` does."""
    end = tokenizer.eos_token
    if end and end in text:
        text = text[: text.index(end)]
    return text.replace(tokenizer.pad_token, "") if tokenizer.pad_token else text


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int, batch_size: int = 100) -> list[str]:
    """Greedy continuations of the prompts (token-id lists), decoded and cut at end of turn."""
    model.eval()
    texts: list[str] = []
    for part in chunks(list(prompts), batch_size):
        features = [{"input_ids": p, "labels": p, "index": i} for i, p in enumerate(part)]
        batch = collate_padded(features, int(tokenizer.pad_token_id), "left")
        # SDPA's fused kernels mis-handle fully masked rows of left padding; the math path is exact.
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            output = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        texts.extend(_cut(t, tokenizer) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=False))
    return texts


def correctness_rows(model: nn.Module, data: LDSData, max_new_tokens: int, sandbox_workers: int = 2) -> list[dict[str, Any]]:
    """One verdict row (``id``, ``domain``, ``correct``, ...) per evaluation item."""
    prompts = [f["prompt_ids"] for f in data.eval_features]
    texts = greedy_answers(model, data.tokenizer, prompts, max_new_tokens)
    verdicts = score_generations(data.eval_examples, texts, SandboxLimits(), workers=sandbox_workers)
    return [v.to_dict() for v in verdicts]
