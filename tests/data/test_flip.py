"""Difficulty-flip resampling and reweighting (paper §4.2, Figure 5b, Table 1)."""

import collections
import json

import pytest

from infra_pl.data.demo import generate_demo
from infra_pl.data.flip import (
    FlipOptions,
    apply_flip,
    difficulty_counts,
    difficulty_weights,
    expected_difficulty,
    flip_difficulty,
    write_difficulty_histograms,
)
from infra_pl.data.schema import validate_example


@pytest.fixture(scope="module")
def demo():
    records = generate_demo(seed=0, n_train=200, n_eval=10, n_pool=400)
    return [validate_example(r) for r in records["train"]], [validate_example(r) for r in records["pool"]]


def _mean(examples, domain):
    levels = [e["difficulty"] for e in examples if e["domain"] == domain]
    return sum(levels) / len(levels)


def test_flip_keeps_sizes_and_moves_math_up_code_down(demo):
    train, pool = demo
    result = flip_difficulty(train, pool, FlipOptions(fraction=0.5, seed=0))
    flipped = result.examples
    assert len(flipped) == len(train)
    assert collections.Counter(e["domain"] for e in flipped) == collections.Counter(e["domain"] for e in train)
    assert _mean(flipped, "math") > _mean(train, "math") and _mean(flipped, "code") < _mean(train, "code")
    assert len({e["id"] for e in flipped}) == len(flipped)  # nothing added twice
    train_ids = {e["id"] for e in train}
    added = [e for e in flipped if e["id"] not in train_ids]
    assert len(added) == result.domains["math"].swapped + result.domains["code"].swapped == 100
    assert {e["id"] for e in added} <= {e["id"] for e in pool}
    # every swap goes the right way: removed easy math for harder math, hard code for easier code
    difficulty = {e["id"]: e["difficulty"] for e in train + pool}
    for removed, new in result.domains["math"].pairs:
        assert difficulty[new] > difficulty[removed]
    for removed, new in result.domains["code"].pairs:
        assert difficulty[new] < difficulty[removed]
    assert "math (harder): swapped 50/50" in result.describe()


def test_reverse_flip_does_the_opposite(demo):
    train, pool = demo
    reverse = flip_difficulty(train, pool, FlipOptions(mode="reverse", fraction=0.5)).examples
    assert len(reverse) == len(train)
    assert _mean(reverse, "math") < _mean(train, "math") and _mean(reverse, "code") > _mean(train, "code")


def test_same_seed_same_dataset_other_seed_other_ties(demo):
    train, pool = demo
    ids = lambda seed: [e["id"] for e in flip_difficulty(train, pool, FlipOptions(seed=seed, fraction=0.3)).examples]
    assert ids(0) == ids(0)
    assert ids(0) != ids(1)  # equally difficult candidates are drawn by the seed


def test_questions_in_train_or_eval_are_never_added(demo):
    train, pool = demo
    hard = [e for e in pool if e["domain"] == "math" and e["difficulty"] == 5][:4]
    # same question as a hard pool item but another trace (another id): must not be added twice
    twin = dict(hard[0], id="twin", messages=[*hard[0]["messages"][:-1], {"role": "assistant", "content": "other trace"}])
    with pytest.warns(UserWarning, match="planned swaps"):
        result = flip_difficulty(train, [twin, *hard], FlipOptions(directions={"math": "harder"}), exclude=[hard[1]])
    added = {new for _, new in result.domains["math"].pairs}
    assert hard[1]["id"] not in added  # an "evaluation" question
    assert len(added & {"twin", hard[0]["id"]}) == 1  # one trace per question
    assert len(added) == 3


def test_small_pool_gives_fewer_swaps_and_says_so(demo):
    train, pool = demo
    hard_math = [e for e in pool if e["domain"] == "math" and e["difficulty"] == 5][:3]
    with pytest.warns(UserWarning, match=r"math: only 3 of 50 planned swaps"):
        result = flip_difficulty(train, hard_math, FlipOptions(directions={"math": "harder"}))
    assert result.domains["math"].swapped == 3 and "code" not in result.domains
    assert [e["id"] for e in result.examples if e["domain"] == "code"] == [e["id"] for e in train if e["domain"] == "code"]


def test_unknown_difficulty_is_never_replaced(demo):
    train, pool = demo
    train = [dict(e, difficulty=None) if i % 4 == 0 else e for i, e in enumerate(train)]
    with pytest.warns(UserWarning, match="planned swaps"):  # fraction 1.0: level-5 math has nothing harder
        result = flip_difficulty(train, pool, FlipOptions(fraction=1.0))
    unknown = [e["id"] for e in train if e["difficulty"] is None]
    assert set(unknown) <= {e["id"] for e in result.examples}
    assert result.domains["math"].unknown_difficulty + result.domains["code"].unknown_difficulty == len(unknown)


def test_reweight_moves_expected_difficulty_like_the_flip(demo):
    train, _ = demo
    weights = difficulty_weights(train, beta=0.5)
    uniform = [1.0] * len(train)
    assert expected_difficulty(train, weights, "math") > expected_difficulty(train, uniform, "math")
    assert expected_difficulty(train, weights, "code") < expected_difficulty(train, uniform, "code")
    for domain in ("math", "code"):  # the domain mix is unchanged in expectation
        in_domain = [w for e, w in zip(train, weights) if e["domain"] == domain]
        assert sum(in_domain) == pytest.approx(len(in_domain))
    reverse = difficulty_weights(train, beta=0.5, reverse=True)
    assert expected_difficulty(train, reverse, "math") < expected_difficulty(train, uniform, "math")
    assert expected_difficulty(train, reverse, "code") > expected_difficulty(train, uniform, "code")
    # a seeded sampler draws the tilted distribution
    import torch

    sampler = torch.utils.data.WeightedRandomSampler(weights, 4000, generator=torch.Generator().manual_seed(0))
    drawn = [train[i] for i in sampler]
    assert _mean(drawn, "math") > _mean(train, "math") + 0.3 and _mean(drawn, "code") < _mean(train, "code") - 0.3


def test_apply_flip_entry_point(demo):
    train, pool = demo
    examples, weights, text = apply_flip(train, pool, FlipOptions(mode="flip"))
    assert weights is None and len(examples) == len(train) and "difficulty flip" in text
    examples, weights, text = apply_flip(train, None, FlipOptions(mode="reweight"))
    assert len(weights) == len(train) and "expected level" in text
    with pytest.raises(ValueError, match="needs pool examples"):
        apply_flip(train, [], FlipOptions(mode="reverse"))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"mode": "flop"}, "flip mode must be one of"), ({"fraction": 1.5}, "fraction must be in"), ({"directions": {"math": "up"}}, "directions must be")],
)
def test_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlipOptions(**kwargs)


def test_histograms_png_and_json(demo, tmp_path):
    train, pool = demo
    flipped = flip_difficulty(train, pool).examples
    png, js = write_difficulty_histograms(train, flipped, tmp_path, name="fig5b")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    payload = json.loads(js.read_text())
    assert payload["counts"]["original"] == difficulty_counts(train)
    assert payload["counts"]["flipped"] == difficulty_counts(flipped)
    means = payload["mean_difficulty"]
    assert means["flipped"]["math"] > means["original"]["math"] and means["flipped"]["code"] < means["original"]["code"]
    weights = difficulty_weights(train)
    _, js = write_difficulty_histograms(train, train, tmp_path, name="reweight", after_weights=weights, labels=("original", "reweighted"))
    assert json.loads(js.read_text())["mean_difficulty"]["reweighted"]["math"] > means["original"]["math"]
