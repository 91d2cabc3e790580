"""Right-padded token batches for the EK-FAC, influence and gradient-check tests (seeded, CPU)."""

from __future__ import annotations

import torch


def padded_batches(
    lengths: list[list[int]], vocab: int, prompt_len: int = 3, max_len: int = 10, seed: int = 0, index: bool = False
) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches: ``lengths`` gives each batch's sequence lengths.

    The first ``prompt_len`` tokens of every sequence and all padding carry label -100, so the
    tests exercise both kinds of masking. Padding ids are random too: masking must not rely on them.
    ``index``: also give each batch an ``index`` (0 .. size-1).
    """
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for batch_lengths in lengths:
        size = len(batch_lengths)
        ids = torch.randint(0, vocab, (size, max_len), generator=gen)
        mask = torch.zeros(size, max_len, dtype=torch.long)
        for row, length in enumerate(batch_lengths):
            mask[row, :length] = 1
        labels = ids.clone()
        labels[:, :prompt_len] = -100
        labels[mask == 0] = -100
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if index:
            batch["index"] = torch.arange(size)
        batches.append(batch)
    return batches
