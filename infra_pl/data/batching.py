"""Length-grouped batching: batches of similar-length sequences waste less compute on padding.

Why it matters here: demo traces range from ~60 to ~300 tokens; random batches spend a third or
more of every step on padding, which on a CPU budget is a third fewer updates.
"""

from __future__ import annotations

import random
from typing import Iterator, Sequence

from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffle, cut into mega-batches, sort each by length, split into batches, shuffle batches.

    Deterministic per (seed, epoch); every ``__iter__`` is the next epoch, so epochs differ.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batches: int = 32):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega_batches * batch_size
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), self.mega):
            chunk = sorted(order[start : start + self.mega], key=lambda i: self.lengths[i])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        return iter(batches)


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_sequences: int | None = None) -> list[list[int]]:
    """Group positions 0..n-1, in order, into batches whose padded size fits ``max_tokens``.

    A batch's padded size is (number of sequences) × (its longest sequence), which is what the
    activations of an attribution pass scale with. Pass lengths sorted ascending, as the
    attribution loaders do. Short sequences then share large batches and long ones get small
    batches: the whole pass runs near the token budget instead of at the batch size that the
    longest example forces.

    ``max_sequences`` caps the number of sequences per batch: per-sequence buffers (the [B, out, in]
    gradients of the lambda and instance passes) grow with the number of sequences, not the
    tokens. A sequence longer than ``max_tokens`` gets a batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for position, length in enumerate(lengths):
        grown = max(longest, int(length))
        full = max_sequences is not None and len(current) >= max_sequences
        if current and (full or (len(current) + 1) * grown > max_tokens):
            batches.append(current)
            current, grown = [], int(length)
        current.append(position)
        longest = grown
    if current:
        batches.append(current)
    return batches


class FixedBatches(Sampler[list[int]]):
    """A precomputed list of batches as a batch sampler (Lightning wraps samplers, not lists)."""

    def __init__(self, batches: Sequence[Sequence[int]]) -> None:
        self.batches = [list(batch) for batch in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(batch) for batch in self.batches])
