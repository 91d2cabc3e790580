"""Attribution batches by padded-token budget: the grouping rule, the loader, and unchanged factors."""

from __future__ import annotations

import random

import pytest

from infra_pl.data.batching import token_budget_batches
from infra_pl.data.datamodule import DemoOptions, ReasoningDataModule
from tests.conftest import TINY_DEMO


def _check_greedy(lengths: list[int], batches: list[list[int]], max_tokens: int, cap: int | None) -> None:
    assert [p for batch in batches for p in batch] == list(range(len(lengths)))  # all, once, in order
    for batch, following in zip(batches, batches[1:] + [None]):
        padded = len(batch) * max(lengths[p] for p in batch)
        assert padded <= max_tokens or len(batch) == 1  # only a lone over-long sequence may exceed
        assert cap is None or len(batch) <= cap
        if following is not None:  # greedy: the next sequence did not fit (budget or cap)
            grown = batch + [following[0]]
            assert len(grown) * max(lengths[p] for p in grown) > max_tokens or (cap is not None and len(grown) > cap)


@pytest.mark.parametrize("cap", [None, 3])
def test_batches_respect_the_budget_and_are_greedy(cap: int | None) -> None:
    rng = random.Random(0)
    lengths = sorted(rng.randint(5, 120) for _ in range(200))
    batches = token_budget_batches(lengths, 240, cap)
    _check_greedy(lengths, batches, 240, cap)
    assert len(batches[0]) > len(batches[-1])  # short sequences share bigger batches


def test_an_over_long_sequence_gets_its_own_batch_and_bad_arguments_are_named() -> None:
    assert token_budget_batches([10, 10, 500, 10], 100) == [[0, 1], [2], [3]]
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches([1], 0)
    with pytest.raises(ValueError, match="max_sequences"):
        token_budget_batches([1], 10, 0)


def test_datamodule_loader_uses_the_budget(tiny_cache) -> None:
    dm = ReasoningDataModule(cache_dir=str(tiny_cache), demo=DemoOptions(**TINY_DEMO), max_length=320,
                             eval_batch_size=8, attribution_max_tokens=640)
    dm.prepare_data()
    dm.setup()
    seen, sizes = [], []
    for batch in dm.attribution_dataloader("train", 8):
        rows, width = batch["input_ids"].shape
        assert rows * width <= 640 or rows == 1
        assert rows <= 8
        seen += batch["index"].tolist()
        sizes.append(rows)
    assert sorted(seen) == list(range(len(dm.train_examples)))
    assert max(sizes) == 8 and min(sizes) < 8  # short items fill the cap, long ones get smaller batches


def test_budget_below_max_length_is_refused(tiny_cache) -> None:
    with pytest.raises(ValueError, match="attribution_max_tokens .* max_length"):
        ReasoningDataModule(cache_dir=str(tiny_cache), max_length=320, attribution_max_tokens=100)
