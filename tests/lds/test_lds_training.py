"""The retrain loop is deterministic: same initial weights, subset and seed -> the same f."""

from __future__ import annotations

import copy

import numpy as np
import torch

from infra_pl.lds.config import LDSSetting, TrainRecipe
from infra_pl.lds.training import item_log_likelihoods, train
from tests.lds.lds_helpers import PAD, batches, features, tiny_llama

RECIPE = TrainRecipe(steps=6, learning_rate=1e-2, batch_size=4)


def _trained(base, items, seed):
    model = copy.deepcopy(base)
    losses = train(model, items, RECIPE, seed, PAD)
    return model, losses


def test_same_subset_and_seed_give_the_same_f_and_seed_matters():
    base = tiny_llama(hidden=16, intermediate=32)
    items, evaluation = features(20, seed=3), batches(features(6, seed=4), 6)
    subset = [items[i] for i in (0, 2, 3, 5, 7, 11, 13, 17, 19)]
    before = item_log_likelihoods(base, evaluation)
    a, losses_a = _trained(base, subset, seed=0)
    b, losses_b = _trained(base, subset, seed=0)
    c, _ = _trained(base, subset, seed=1)
    fa, fb, fc = (item_log_likelihoods(m, evaluation) for m in (a, b, c))
    assert np.abs(fa - fb).max() < 1e-6 and losses_a == losses_b
    assert np.abs(fa - fc).max() > 1e-4  # another batch order is another model
    assert np.abs(fa - before).max() > 1e-3  # training did something
    assert len(losses_a) == RECIPE.steps
    assert all(torch.equal(p, q) for p, q in zip(base.state_dict().values(), tiny_llama(16, 32).state_dict().values()))


def test_setting_digest_changes_with_any_field():
    base = LDSSetting()
    assert LDSSetting().digest() == base.digest()
    assert LDSSetting(n_train=300).digest() != base.digest()
    assert LDSSetting(finetune=TrainRecipe(steps=61, learning_rate=2e-3)).digest() != base.digest()
    assert LDSSetting.from_dict(base.to_dict()) == base
