"""ReasoningDataModule with its training-mix data options (difficulty, flip, remove_exploration)."""

import collections
import types

import torch

from infra_pl.data.datamodule import ReasoningDataModule
from infra_pl.data.flip import FlipOptions

DEMO = {"seed": 0, "n_train": 80, "n_eval": 5, "n_pool": 160}


def _module(tmp_path, **kwargs):
    from infra_pl.data.datamodule import DemoOptions

    dm = ReasoningDataModule(cache_dir=str(tmp_path / "cache"), demo=DemoOptions(**DEMO), batch_size=8, **kwargs)
    dm.trainer = types.SimpleNamespace(is_global_zero=True, log_dir=str(tmp_path / "logs"), default_root_dir=str(tmp_path))
    dm.setup()
    return dm


def _mean(examples, domain):
    levels = [e["difficulty"] for e in examples if e["domain"] == domain]
    return sum(levels) / len(levels)


def test_flip_and_reverse_in_the_datamodule(tmp_path):
    plain = _module(tmp_path)
    flipped = _module(tmp_path, flip=FlipOptions(mode="flip"))  # pool defaults to the demo pool
    reverse = _module(tmp_path, flip=FlipOptions(mode="reverse"))
    count = lambda dm: collections.Counter(e["domain"] for e in dm.train_examples)
    assert count(flipped) == count(plain) == count(reverse)
    assert _mean(flipped.train_examples, "math") > _mean(plain.train_examples, "math") > _mean(reverse.train_examples, "math")
    assert _mean(flipped.train_examples, "code") < _mean(plain.train_examples, "code") < _mean(reverse.train_examples, "code")
    eval_prompts = {e["messages"][-2]["content"] for e in flipped.eval_examples}
    assert not eval_prompts & {e["messages"][-2]["content"] for e in flipped.train_examples}
    assert (tmp_path / "logs" / "difficulty_flip.png").exists() and (tmp_path / "logs" / "difficulty_reverse.json").exists()


def test_reweight_samples_by_weight_and_exploration_cut(tmp_path):
    dm = _module(tmp_path, flip=FlipOptions(mode="reweight", beta=1.0), remove_exploration=True)
    assert dm.train_weights is not None and len(dm.train_weights) == len(dm.train_examples)
    assert sum(e["behaviours"]["exploration"] for e in dm.train_examples) == 0
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
    drawn = [dm.train_examples[i] for batch in loader for i in batch["index"].tolist()]
    assert _mean(drawn, "math") > _mean(dm.train_examples, "math")
