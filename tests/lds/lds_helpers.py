"""Tiny seeded models and token features for the LDS tests (CPU, well under a second each)."""

from __future__ import annotations

import torch

from infra_pl.data.chat_encoding import IGNORE_INDEX, collate_padded

VOCAB = 40
PAD = 0
# The model_config of the tiny LDS settings that run the whole experiment (retrains included).
TINY_MODEL = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def tiny_llama(hidden: int = 8, intermediate: int = 16, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


def features(count: int, seed: int, prompt: int = 3, lengths: tuple[int, int] = (6, 12)) -> list[dict]:
    """Random token sequences; the first ``prompt`` tokens are context (label -100)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for index in range(count):
        n = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen))
        ids = torch.randint(1, VOCAB, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:], "index": index})
    return out


def batches(items: list[dict], size: int) -> list[dict[str, torch.Tensor]]:
    return [collate_padded(items[i : i + size], PAD) for i in range(0, len(items), size)]
