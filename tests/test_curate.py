"""Influence-guided curation (issue 25): sizes, quotas, determinism, the random control, the
derived difficulty rule, and clear errors for a wrong score file, measurement or quota."""

import collections
import json
import types

import numpy as np
import pandas as pd
import pytest

from infra_pl.curate import CurateOptions, CurationError, curate, domain_difficulty_rule
from infra_pl.curate import main as curate_main
from infra_pl.data.datamodule import DemoOptions, ReasoningDataModule
from infra_pl.data.sources import Source

DEMO = {"seed": 0, "n_train": 80, "n_eval": 5, "n_pool": 160}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The tiny demo's training and pool examples (difficulty levels 1-5) and the eval items."""
    cache = tmp_path_factory.mktemp("curate_cache")
    dm = ReasoningDataModule(cache_dir=str(cache), demo=DemoOptions(**DEMO), pool=[Source("demo:pool")])
    dm.prepare_data()
    dm.setup()
    pool = dm._load(dm.pool_sources, "pool")
    return types.SimpleNamespace(cache=cache, train=dm.train_examples, pool=pool, eval=dm.eval_examples)


def write_scores(path, train, seed=0, math_slope=1.0, code_slope=-1.0, drop=0, ids=None):
    """A synthetic instance-score table for ``train``: score_math rises with math difficulty,
    score_code falls with code difficulty, plus noise; one row per example."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, e in enumerate(train[drop:]):
        level = float(e["difficulty"])
        slope = math_slope if e["domain"] == "math" else code_slope
        rows.append({
            "id": e["id"] if ids is None else ids[k],
            "index": k,
            "domain": e["domain"],
            "difficulty": e["difficulty"],
            "n_target_tokens": 10 + k % 7,
            "score_math": slope * level + rng.normal(0, 0.5) - 1.0,
            "score_code": rng.normal(0, 1.0),
        })
    pd.DataFrame(rows).to_parquet(path)
    return path


def counts(examples):
    return collections.Counter(e["domain"] for e in examples)


def test_top_keeps_size_and_domain_quotas_and_is_deterministic(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train)
    options = CurateOptions(scores=str(scores), mode="top", by="math", fraction=0.25, seed=3)
    first, second = curate(demo.train, options), curate(demo.train, options)
    assert [e["id"] for e in first.examples] == [e["id"] for e in second.examples]  # deterministic
    assert len(first.examples) == round(0.25 * len(demo.train)) == first.rule["size_after"]
    before = counts(demo.train)
    after = counts(first.examples)
    assert set(after) == set(before)  # no domain wiped out
    for d in before:  # proportional quota: each domain keeps its share
        assert abs(after[d] - 0.25 * before[d]) <= 1
    # Within each domain the kept examples are exactly the best-scored ones.
    frame = pd.read_parquet(scores).set_index("id")
    kept = {e["id"] for e in first.examples}
    for d in before:
        ranked = frame[frame.domain == d]["score_math"].sort_values(ascending=False)
        assert set(ranked.index[: after[d]]) == {i for i in kept if frame.at[i, "domain"] == d}
    # Another curation seed only changes tie-breaking: with continuous scores, the same set.
    other = curate(demo.train, CurateOptions(scores=str(scores), mode="top", by="math", fraction=0.25, seed=4))
    assert {e["id"] for e in other.examples} == kept


def test_global_quota_with_min_share_and_explicit_counts(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train, math_slope=5.0)  # math scores dominate a global ranking
    glob = curate(demo.train, CurateOptions(scores=str(scores), by="math", fraction=0.5, quotas="global"))
    share = curate(demo.train, CurateOptions(scores=str(scores), by="math", fraction=0.5, quotas="global", min_share=0.3))
    size = round(0.5 * len(demo.train))
    assert len(glob.examples) == len(share.examples) == size
    assert counts(share.examples)["code"] >= np.ceil(0.3 * size)
    assert counts(share.examples)["code"] > counts(glob.examples)["code"]
    fixed = curate(demo.train, CurateOptions(scores=str(scores), by="math", quotas={"math": 10, "code": 5}))
    assert counts(fixed.examples) == {"math": 10, "code": 5}
    shares = curate(demo.train, CurateOptions(scores=str(scores), by="math", fraction=0.5, quotas={"math": 0.75, "code": 0.25}))
    assert counts(shares.examples) == {"math": round(0.75 * size), "code": round(0.25 * size)}


def test_random_control_matches_size_and_domain_counts(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train, math_slope=5.0)
    for quotas, min_share in (("proportional", 0.0), ("global", 0.2)):
        options = dict(scores=str(scores), by="mean_z", fraction=0.4, quotas=quotas, min_share=min_share, seed=1)
        best = curate(demo.train, CurateOptions(**options))
        control = curate(demo.train, CurateOptions(**options, random=True))
        assert counts(control.examples) == counts(best.examples)
        assert {e["id"] for e in control.examples} != {e["id"] for e in best.examples}
        assert control.rule["random"] and control.rule["control_of"] == dict(counts(best.examples))
        again = curate(demo.train, CurateOptions(**options, random=True))
        assert [e["id"] for e in again.examples] == [e["id"] for e in control.examples]  # deterministic too
        other = curate(demo.train, CurateOptions(**{**options, "seed": 2}, random=True))
        assert {e["id"] for e in other.examples} != {e["id"] for e in control.examples}


def test_drop_removes_only_negative_examples_within_the_fraction(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train)
    frame = pd.read_parquet(scores).set_index("id")
    result = curate(demo.train, CurateOptions(scores=str(scores), mode="drop", by="math", fraction=0.2))
    dropped = {e["id"] for e in demo.train} - {e["id"] for e in result.examples}
    assert dropped and all(frame.loc[list(dropped), "score_math"] < 0)
    for d, n in counts(demo.train).items():
        gone = sum(1 for i in dropped if frame.at[i, "domain"] == d)
        assert gone <= round(0.2 * n)


def test_reweight_keeps_data_and_domain_mass_and_the_control_permutes_weights(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train)
    result = curate(demo.train, CurateOptions(scores=str(scores), mode="reweight", by="math", beta=1.0))
    control = curate(demo.train, CurateOptions(scores=str(scores), mode="reweight", by="math", beta=1.0, random=True))
    assert [e["id"] for e in result.examples] == [e["id"] for e in demo.train]
    for d, n in counts(demo.train).items():
        mass = [w for e, w in zip(result.examples, result.weights) if e["domain"] == d]
        assert sum(mass) == pytest.approx(n)
        assert sorted(mass) == pytest.approx(sorted(w for e, w in zip(control.examples, control.weights) if e["domain"] == d))
    frame = pd.read_parquet(scores).set_index("id")
    math = [(frame.at[e["id"], "score_math"], w) for e, w in zip(result.examples, result.weights) if e["domain"] == "math"]
    best, worst = max(math), min(math)
    assert best[1] > worst[1]


def test_derived_flip_learns_directions_from_the_score_table(demo, tmp_path):
    # Scores rise with math level and fall with code level: the paper's rule, learned.
    scores = write_scores(tmp_path / "s.parquet", demo.train, math_slope=1.0, code_slope=-1.0)
    options = CurateOptions(scores=str(scores), mode="derived_flip", by="math", fraction=0.5)
    result = curate(demo.train, options, pool=demo.pool, exclude=demo.eval)
    derived = result.rule["derived"]
    assert derived["directions"] == {"math": "harder", "code": "easier"}
    assert derived["agrees_with_paper"] == {"math": True, "code": True}
    assert counts(result.examples) == counts(demo.train)
    mean = lambda ex, d: np.mean([e["difficulty"] for e in ex if e["domain"] == d])
    assert mean(result.examples, "math") > mean(demo.train, "math")
    assert mean(result.examples, "code") < mean(demo.train, "code")
    # Opposite slopes give the opposite rule (the fixed rule would not change).
    opposite = write_scores(tmp_path / "o.parquet", demo.train, math_slope=-1.0, code_slope=1.0)
    rule = curate(demo.train, CurateOptions(scores=str(opposite), mode="derived_flip", by="math"), pool=demo.pool,
                  exclude=demo.eval).rule["derived"]
    assert rule["directions"] == {"math": "easier", "code": "harder"}
    # The control swaps as many examples per domain, at random, keeping counts.
    control = curate(demo.train, CurateOptions(**{**options.__dict__, "random": True}), pool=demo.pool, exclude=demo.eval)
    assert counts(control.examples) == counts(demo.train)
    assert {d: len(p) for d, p in control.rule["pairs"].items()} == result.rule["swaps"]
    eval_prompts = {e["messages"][-2]["content"] for e in demo.eval}
    assert not eval_prompts & {e["messages"][-2]["content"] for e in control.examples}


def test_domain_difficulty_rule_table():
    frame = pd.DataFrame({"domain": ["math"] * 4, "difficulty": [1, 1, 3, 3]})
    rule = domain_difficulty_rule(frame, pd.Series([0.0, 0.2, 1.0, 1.2]))
    entry = rule["table"]["math"]
    assert entry["levels"] == {"1": {"n": 2, "mean_score": pytest.approx(0.1)}, "3": {"n": 2, "mean_score": pytest.approx(1.1)}}
    assert entry["slope"] == pytest.approx(0.5) and rule["directions"] == {"math": "harder"}
    # A slope within noise gives no direction when a minimum |t| is asked for.
    noisy = domain_difficulty_rule(frame, pd.Series([0.0, 1.0, 0.1, 1.0]), min_abs_t=2.0)
    assert noisy["directions"] == {} and noisy["table"]["math"]["direction"] == "keep"


# ----------------------------------------------------------------------------- bad input
def test_score_file_from_another_dataset_is_refused(demo, tmp_path):
    other = write_scores(tmp_path / "other.parquet", demo.train, ids=[f"x{k}" for k in range(len(demo.train))])
    with pytest.raises(CurationError, match="scores none of the 80 training examples"):
        curate(demo.train, CurateOptions(scores=str(other), by="math"))
    partial = write_scores(tmp_path / "partial.parquet", demo.train, drop=5)
    with pytest.raises(CurationError, match="5 of 80 training examples have no score"):
        curate(demo.train, CurateOptions(scores=str(partial), by="math"))
    with pytest.raises(CurationError, match="does not exist"):
        curate(demo.train, CurateOptions(scores=str(tmp_path / "missing.parquet")))


def test_unknown_measurement_is_refused_with_the_closest_name(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train)
    with pytest.raises(CurationError, match=r"'maht' is not in .*did you mean 'math'.*\['math', 'code'\]"):
        curate(demo.train, CurateOptions(scores=str(scores), by="maht"))
    with pytest.raises(CurationError, match="'logic'"):
        curate(demo.train, CurateOptions(scores=str(scores), by=["math", "logic"]))


def test_impossible_quotas_are_refused(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train)
    n_code = counts(demo.train)["code"]
    with pytest.raises(CurationError, match=f"code needs {n_code + 1} examples but the training set has {n_code}"):
        curate(demo.train, CurateOptions(scores=str(scores), by="math", quotas={"math": 3, "code": n_code + 1}))
    with pytest.raises(CurationError, match="quota cannot be met: min_share"):
        curate(demo.train, CurateOptions(scores=str(scores), by="math", fraction=1.0, quotas="global", min_share=0.9))
    with pytest.raises(CurationError, match=r"domain\(s\) \['logic'\]"):
        curate(demo.train, CurateOptions(scores=str(scores), by="math", quotas={"math": 0.5, "code": 0.25, "logic": 0.25}))
    with pytest.raises(CurationError, match="no quota for \\['code'\\]"):
        curate(demo.train, CurateOptions(scores=str(scores), by="math", quotas={"math": 0.5}))
    with pytest.raises(CurationError, match="sum to 1"):
        curate(demo.train, CurateOptions(scores=str(scores), by="math", quotas={"math": 0.5, "code": 0.2}))
    with pytest.raises(CurationError, match="fraction"):
        CurateOptions(scores=str(scores), fraction=0.0)


# ----------------------------------------------------------------------------- the DataModule option and the command
def test_datamodule_curate_option_writes_rule_and_ids_and_refuses_before_training(demo, tmp_path):
    scores = write_scores(tmp_path / "s.parquet", demo.train)
    out = tmp_path / "curation"
    dm = ReasoningDataModule(cache_dir=str(demo.cache), demo=DemoOptions(**DEMO), batch_size=8,
                             curate=CurateOptions(scores=str(scores), by="math", fraction=0.5, out_dir=str(out)))
    dm.setup()
    assert len(dm.train_examples) == 40 and len(dm._train_features) == 40
    rule = json.loads((out / "curation.json").read_text())
    ids = [json.loads(line)["id"] for line in (out / "selected_ids.jsonl").read_text().splitlines()]
    assert ids == [e["id"] for e in dm.train_examples] and rule["size_after"] == 40 and rule["score"] == "math"
    assert rule["scores_sha256"] and rule["counts_before"] == dict(sorted(counts(demo.train).items()))

    reweighted = ReasoningDataModule(cache_dir=str(demo.cache), demo=DemoOptions(**DEMO), batch_size=8,
                                     curate=CurateOptions(scores=str(scores), mode="reweight", out_dir=str(tmp_path / "rw")))
    reweighted.setup()
    assert reweighted.train_weights is not None and len(reweighted.train_dataloader().sampler.weights) == 80

    bad = ReasoningDataModule(cache_dir=str(demo.cache), demo=DemoOptions(**DEMO), batch_size=8,
                              curate=CurateOptions(scores=str(scores), by="nope", out_dir=str(out)))
    with pytest.raises(CurationError, match="'nope'"):
        bad.setup()
    assert not bad._train_features  # refused before tokenisation, so long before any training


def test_infra_pl_curate_command_writes_the_mixture(demo, tmp_path, capsys):
    import yaml

    scores = write_scores(tmp_path / "s.parquet", demo.train)
    # A base and an overlay, merged as `infra-pl fit -c BASE -c OVERLAY` merges them.
    base, overlay = tmp_path / "base.yaml", tmp_path / "overlay.yaml"
    base.write_text(yaml.safe_dump({"trainer": {"default_root_dir": str(tmp_path / "base")},
                                    "data": {"cache_dir": str(demo.cache), "demo": DEMO}}))
    overlay.write_text(yaml.safe_dump({
        "trainer": {"default_root_dir": str(tmp_path / "run")},
        "data": {"curate": {"scores": str(scores), "by": "math", "fraction": 0.25, "quotas": "proportional"}},
    }))
    with pytest.raises(CurationError, match="has no data.curate section"):
        curate_main(["-c", str(base)])
    curate_main(["-c", str(base), "-c", str(overlay)])
    out = tmp_path / "run" / "curation"
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and (out / "curation.json").exists()
    assert "curation top by math: 80 -> 20" in capsys.readouterr().out
    curate_main(["-c", str(base), "-c", str(overlay), "--random", "--out", str(tmp_path / "ctl")])
    control = [json.loads(line) for line in (tmp_path / "ctl" / "train.jsonl").read_text().splitlines()]
    assert counts(control) == counts(rows)

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"cache_dir": str(demo.cache), "demo": DEMO,
                                               "curate": {"scores": str(scores), "quotas": "everything"}}}))
    with pytest.raises(CurationError, match="quotas must be one of"):
        curate_main(["-c", str(config)])


def test_infra_pl_commands_print_one_line_errors(demo, tmp_path, capsys):
    """`infra-pl curate` / `infra-pl compare` go through the CLI's known-error reporting."""
    import yaml

    from infra_pl.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"cache_dir": str(demo.cache), "demo": DEMO,
                                               "curate": {"scores": str(tmp_path / "none.parquet")}}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["curate", "-c", str(config)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "infra-pl: error: data.curate scores:" in err and "does not exist" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["compare", "--out", str(tmp_path / "cmp"), "--variant", f"base={tmp_path / 'missing.yaml'}"])
    assert "variant 'base': config" in capsys.readouterr().err
