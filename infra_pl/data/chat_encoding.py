"""Chat-template tokenisation with every non-assistant token masked out of the loss.

Why per-turn prefixes: rendering the conversation up to turn *i* with and without the
assistant's reply gives exact token boundaries for any chat template, without parsing the
template or relying on character offsets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]  # everything before the last assistant turn, ending with the generation prompt
    truncated: bool = False


@dataclass
class TruncationStats:
    """Counts what truncation did, so the user gets one summary warning instead of silence."""

    truncated: int = 0
    dropped: int = 0
    dropped_ids: list[str] = field(default_factory=list)

    def warn(self, split: str, max_length: int) -> None:
        if self.truncated or self.dropped:
            warnings.warn(
                f"[{split}] {self.truncated} example(s) longer than max_length={max_length} were truncated; "
                f"{self.dropped} dropped because no assistant token survived truncation "
                f"(first ids: {self.dropped_ids[:5]}). Raise max_length to keep them whole.",
                stacklevel=2,
            )


def _render(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def tokenize_chat(tokenizer: Any, messages: Sequence[dict], max_length: int) -> TokenizedExample | None:
    """Token ids and labels of a conversation; ``None`` if no target token fits in ``max_length``."""
    full = _render(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    prompt_ids: list[int] = []
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:turn], add_generation_prompt=True)) if turn else 0
        end = len(_render(tokenizer, messages[: turn + 1], add_generation_prompt=False))
        # The template's separator after the end-of-turn token is context, not a target.
        while end > start and tokenizer.decode([full[end - 1]]).strip() == "":
            end -= 1
        labels[start:end] = full[start:end]
        prompt_ids = full[:start]
    truncated = len(full) > max_length
    if truncated:
        full, labels = full[:max_length], labels[:max_length]
    # A label at position 0 can never be predicted (no context), so it cannot carry loss.
    if labels:
        labels[0] = IGNORE_INDEX
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return TokenizedExample(full, labels, prompt_ids, truncated)


def collate_padded(
    features: list[dict[str, Any]], pad_token_id: int, pad_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad ``input_ids``/``labels`` into a batch; ``index`` rides along for shard reassembly."""
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        span = slice(0, n) if pad_side == "right" else slice(longest - n, longest)
        input_ids[row, span] = torch.tensor(feature["input_ids"], dtype=torch.long)
        labels[row, span] = torch.tensor(feature["labels"], dtype=torch.long)
        attention_mask[row, span] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "index": torch.tensor([f["index"] for f in features], dtype=torch.long),
    }
