"""Length-fair statistics: per-token means, length-adjusted differences and the ``length_driven`` flag.

The synthetic tables make S(z) a sum over tokens, S = n_tokens x (per-token value), with a behaviour
that is more common in long traces. When the behaviour adds nothing per token, the raw difference
is real but made by length alone: it must be flagged. When it adds per token, it must not be.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from infra_pl.report.aggregate import (
    behaviour_summary,
    difficulty_contrast_table,
    group_summary,
    in_vs_cross_domain_table,
    sentence_behaviour_summary,
    standard_tables,
)
from infra_pl.report.length import adjusted_difference, compare, length_driven, length_strata, per_token
from infra_pl.report.validate import ReportInputError

FAST = {"n_boot": 200, "seed": 0}


def synthetic(n: int, seed: int, per_token_effect: float = 0.0) -> pd.DataFrame:
    """Two domains with different length distributions; exploration is likelier in long traces.

    S = n_tokens x (0.02 + per_token_effect x exploration + noise) + small noise, for measurement
    math; measurement code is noise only.
    """
    rng = np.random.default_rng(seed)
    domain = np.where(rng.random(n) < 0.5, "math", "code")
    log_len = rng.normal(np.where(domain == "math", 6.0, 6.4), 0.6)
    tokens = np.maximum(1, np.round(np.exp(log_len))).astype(int)
    z = (log_len - log_len.mean()) / log_len.std()
    present = rng.random(n) < 1.0 / (1.0 + np.exp(-2.5 * z))
    per_tok = 0.02 + per_token_effect * present + 0.04 * rng.standard_normal(n)
    return pd.DataFrame({
        "id": [f"x{i}" for i in range(n)],
        "domain": domain,
        "n_target_tokens": tokens,
        "score_math": tokens * per_tok + rng.normal(0.0, 1.0, n),
        "score_code": rng.normal(0.0, 1.0, n),
        "behaviour_exploration": present.astype(int),
    })


def _excludes_zero(low: float, high: float) -> bool:
    return low > 0 or high < 0


# --------------------------------------------------------------------------- the flag, end to end


def test_length_alone_makes_a_raw_difference_that_is_flagged():
    table = behaviour_summary(synthetic(4000, seed=2), n_boot=400, seed=0)
    row = table[(table["behaviour"] == "exploration") & (table["measurement"] == "math")].iloc[0]
    assert row["difference_ci_low"] > 0  # with-exploration examples are longer, so their raw sums are larger
    assert row["difference_length_adjusted_ci_low"] < 0 < row["difference_length_adjusted_ci_high"]
    assert row["difference_per_token_ci_low"] < 0 < row["difference_per_token_ci_high"]
    assert row["adjusted_coverage"] == 1.0 and row["n_no_tokens"] == 0
    assert row["length_driven"] is True or row["length_driven"] == True  # noqa: E712 (pandas BooleanDtype)
    assert str(table["length_driven"].dtype) == "boolean"


def test_a_real_per_token_effect_is_not_flagged():
    table = behaviour_summary(synthetic(4000, seed=2, per_token_effect=0.015), n_boot=400, seed=0)
    row = table[(table["behaviour"] == "exploration") & (table["measurement"] == "math")].iloc[0]
    assert row["difference_ci_low"] > 0
    assert row["difference_length_adjusted_ci_low"] > 0  # still there among examples of the same length
    assert row["difference_per_token_ci_low"] > 0
    assert row["length_driven"] == False  # noqa: E712
    noise = table[(table["behaviour"] == "exploration") & (table["measurement"] == "code")].iloc[0]
    assert not _excludes_zero(noise["difference_ci_low"], noise["difference_ci_high"])
    assert noise["length_driven"] == False  # noqa: E712 (nothing raw to explain away)


def test_length_driven_rule():
    flag = length_driven(np.array([1.0, 1.0, 1.0, -3.0, -1.0, 1.0]), np.array([2.0, 2.0, 2.0, -2.0, 1.0, 2.0]),
                         np.array([0.5, -1.0, -3.0, -1.0, 0.2, np.nan]), np.array([1.0, 1.0, -2.0, 1.0, 0.4, np.nan]))
    # holds / includes 0 / flips / includes 0 (negative raw) / raw not significant / adjusted unavailable
    assert list(flag) == [False, True, True, True, False, True]
    assert length_driven(np.array([1.0]), np.array([2.0]), np.array([0.5]), np.array([1.0]), known=False).isna().all()


# --------------------------------------------------------------------------- building blocks


def test_per_token_excludes_zero_and_missing_counts():
    values = np.array([[2.0, 4.0], [3.0, 3.0], [1.0, 1.0]])
    ratio, valid = per_token(values, np.array([4.0, 0.0, np.nan]))
    assert list(valid) == [True, False, False]
    np.testing.assert_allclose(ratio[0], [0.5, 1.0])
    assert np.isnan(ratio[1:]).all()
    none, valid_none = per_token(values, None)
    assert np.isnan(none).all() and not valid_none.any()


def test_length_strata_are_quantiles_within_groups_and_keep_ties_together():
    tokens = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 100, 100, 100, 0, np.nan], dtype=float)
    groups = ["a"] * 10 + ["b"] * 4 + ["a", "a"]
    codes = length_strata(tokens, 5, groups)
    assert list(codes[:10]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # two per quintile in group a
    assert len(set(codes[10:14])) == 1 and codes[10] >= 5  # group b: tied lengths, one stratum of its own
    assert list(codes[14:]) == [-1, -1]  # no token count: no stratum
    with pytest.raises(ValueError):
        length_strata(tokens, 0)


def test_adjusted_difference_removes_an_exact_length_effect_and_recovers_a_shift():
    rng = np.random.default_rng(3)
    tokens = rng.integers(50, 2000, size=600).astype(float)
    side = rng.random(600) < (tokens / 2000)  # side A is longer on average
    strata = length_strata(tokens, 5)
    pure_length = 0.03 * tokens
    out = adjusted_difference(pure_length, side, tokens, strata, n_boot=200, seed=0)
    raw = pure_length[side].mean() - pure_length[~side].mean()
    assert raw > 5  # the raw difference is large...
    assert out["difference"][0] == pytest.approx(0.0, abs=1e-9)  # ...and all of it is length
    assert abs(out["ci_low"][0]) < 1e-9 and abs(out["ci_high"][0]) < 1e-9
    # plain within-quintile differences would keep part of it (the longest quintile is wide)
    plain = sum((strata == s).sum() * (pure_length[(strata == s) & side].mean() - pure_length[(strata == s) & ~side].mean())
                for s in np.unique(strata)) / len(strata)
    assert plain > 0.5
    shifted = adjusted_difference(pure_length + 2.0 * side, side, tokens, strata, n_boot=200, seed=0)
    assert shifted["difference"][0] == pytest.approx(2.0)  # a per-example effect survives the adjustment
    assert shifted["coverage"] == 1.0
    flipped = adjusted_difference(pure_length + 2.0 * side, ~side, tokens, strata, n_boot=200, seed=0)
    assert flipped["difference"][0] == pytest.approx(-2.0)


def test_adjusted_difference_without_overlap_is_nan_with_zero_coverage():
    tokens = np.arange(1, 41, dtype=float)
    side = tokens > 20  # the two sides never have similar lengths
    out = adjusted_difference(tokens * 1.0, side, tokens, length_strata(tokens, 2), n_boot=50)
    assert np.isnan(out["difference"][0]) and out["coverage"] == 0.0
    result = compare((tokens * 1.0)[:, None], side, tokens, length_strata(tokens, 2), n_boot=50)
    assert result["difference_ci_low"][0] > 0 and bool(result["length_driven"][0])


def test_compare_is_reproducible_and_needs_no_lengths():
    df = synthetic(500, seed=1)
    values = df[["score_math", "score_code"]].to_numpy()
    present = df["behaviour_exploration"].to_numpy() > 0
    tokens = df["n_target_tokens"].to_numpy(dtype=float)
    first = compare(values, present, tokens, length_strata(tokens, 5, df["domain"]), n_boot=100, seed=7)
    again = compare(values, present, tokens, length_strata(tokens, 5, df["domain"]), n_boot=100, seed=7)
    for key in first:
        np.testing.assert_array_equal(np.asarray(first[key], dtype=float), np.asarray(again[key], dtype=float))
    blind = compare(values, present, None, None, n_boot=100, seed=7)
    np.testing.assert_allclose(blind["difference_ci_low"], first["difference_ci_low"])  # raw part unchanged
    assert np.isnan(blind["difference_per_token"]).all() and np.isnan(blind["difference_length_adjusted"]).all()
    assert pd.isna(blind["length_driven"]).all()


# --------------------------------------------------------------------------- tables


def test_group_summary_per_token_hand_computed(instance_df):
    table = group_summary(instance_df, "domain", **FAST)
    math = table[(table["domain"] == "math") & (table["measurement"] == "math")].iloc[0]
    assert math["mean_per_token"] == pytest.approx(np.mean([1 / 10, 2 / 12, -3 / 9, 4 / 20]))
    assert math["mean_per_token_ci_low"] <= math["mean_per_token"] <= math["mean_per_token_ci_high"]
    assert math["n_no_tokens"] == 0
    # raw statistics do not depend on the per-token columns
    blind = group_summary(instance_df.drop(columns=["n_target_tokens"]), "domain", **FAST)
    pd.testing.assert_frame_equal(blind.iloc[:, :10], table.iloc[:, :10])
    assert blind["mean_per_token"].isna().all() and list(blind["n_no_tokens"]) == list(blind["n"])


def test_group_summary_leaves_out_and_counts_examples_without_tokens(instance_df):
    df = instance_df.copy()
    df["n_target_tokens"] = [0, np.nan, 9, 20, 30, 25, 8]  # a has no target tokens, b an unknown count
    table = group_summary(df, "domain", **FAST)
    math = table[(table["domain"] == "math") & (table["measurement"] == "math")].iloc[0]
    assert math["n"] == 4 and math["n_no_tokens"] == 2
    assert math["mean_per_token"] == pytest.approx((-3 / 9 + 4 / 20) / 2)
    with pytest.raises(ReportInputError, match="negative or infinite 'n_target_tokens'"):
        group_summary(df.assign(n_target_tokens=[-1, 1, 1, 1, 1, 1, 1]), "domain", **FAST)
    with pytest.raises(ReportInputError, match="must be numeric token counts"):
        group_summary(df.assign(n_target_tokens=["x"] * 7), "domain", **FAST)


def test_cross_domain_table_has_per_token_columns_after_the_old_ones(instance_df):
    table = standard_tables(instance_df, **FAST)["cross_domain"]
    assert list(table.columns[:10]) == ["domain", "n", "math_mean", "math_ci_low", "math_ci_high", "math_share_positive",
                                        "code_mean", "code_ci_low", "code_ci_high", "code_share_positive"]
    code = table[table["domain"] == "code"].iloc[0]
    assert code["math_mean_per_token"] == pytest.approx(np.mean([-2 / 30, 5 / 25, 3 / 8]))
    assert code["math_per_token_ci_low"] <= code["math_mean_per_token"] <= code["math_per_token_ci_high"]
    assert code["n_no_tokens"] == 0


def test_behaviour_summary_difference_columns_on_fixture(instance_df):
    table = behaviour_summary(instance_df, **FAST)
    ver = table[(table["behaviour"] == "verification") & (table["measurement"] == "math")].iloc[0]
    assert ver["difference_ci_low"] <= ver["difference"] <= ver["difference_ci_high"]
    assert ver["mean_per_token_with"] == pytest.approx(np.mean([1 / 10, -3 / 9, 5 / 25]))  # a, c, f
    assert ver["difference_per_token"] == pytest.approx(ver["mean_per_token_with"] - ver["mean_per_token_without"])
    # seven examples: no length stratum holds two of each side, so nothing is length-adjusted
    assert np.isnan(ver["difference_length_adjusted"]) and ver["adjusted_coverage"] == 0.0
    blind = behaviour_summary(instance_df.drop(columns=["n_target_tokens"]), **FAST)
    assert blind["length_driven"].isna().all() and blind["difference_per_token"].isna().all()
    np.testing.assert_allclose(blind["difference_ci_low"], table["difference_ci_low"])


def test_in_vs_cross_domain_table_on_fixture(instance_df):
    table = in_vs_cross_domain_table(instance_df.assign(score_aime=0.0), **FAST)
    assert table.attrs["skipped"] == ["aime"]  # no training domain called aime
    assert list(zip(table["measurement"], table["other_domain"])) == [("math", "code"), ("code", "math")]
    math = table[table["measurement"] == "math"].iloc[0]
    assert (math["n_in"], math["n_other"], math["mean_in"], math["mean_other"]) == (4, 3, 1.0, 2.0)
    assert math["difference"] == -1.0
    code = table[table["measurement"] == "code"].iloc[0]
    assert (code["mean_in"], code["mean_other"], code["difference"]) == (2.0, 0.0, 2.0)
    assert code["mean_per_token_in"] == pytest.approx(np.mean([1 / 30, 1 / 25, 4 / 8]))
    # the math row is the code-minus-math bootstrap mirrored, not a second draw
    pair = instance_df["domain"].isin(["code", "math"]).to_numpy()
    direct = compare(instance_df[["score_math"]].to_numpy(), (instance_df["domain"] == "code").to_numpy(),
                     instance_df["n_target_tokens"].to_numpy(dtype=float),
                     length_strata(instance_df["n_target_tokens"].to_numpy(dtype=float)[pair], 5), **FAST)
    assert math["difference_ci_low"] == pytest.approx(-direct["difference_ci_high"][0])
    assert math["difference_ci_high"] == pytest.approx(-direct["difference_ci_low"][0])
    assert math["difference_per_token_ci_low"] == pytest.approx(-direct["difference_per_token_ci_high"][0])


def test_difficulty_contrast_on_fixture_and_middle_levels(instance_df):
    table = difficulty_contrast_table(instance_df, **FAST)
    assert table.attrs["skipped"] == ["code"]  # code has one level (2) and an unlabelled example
    row = table[table["measurement"] == "math"].iloc[0]
    assert (row["domain"], row["low_levels"], row["high_levels"], row["n_low"], row["n_high"]) == ("math", "1", "5", 2, 2)
    assert (row["mean_low"], row["mean_high"], row["difference"]) == (1.5, 0.5, -1.0)
    five = pd.DataFrame({"id": [f"e{i}" for i in range(10)], "domain": "math",
                         "difficulty": [1, 1, 2, 2, 3, 3, 4, 4, 5, 5], "difficulty_source": "math_level",
                         "n_target_tokens": [10] * 10, "score_math": [0, 1, 1, 2, 9, 9, 3, 4, 4, 5.0]})
    levels = difficulty_contrast_table(five, **FAST).iloc[0]
    assert (levels["low_levels"], levels["high_levels"], levels["n_low"], levels["n_high"]) == ("1,2", "4,5", 4, 4)
    assert levels["difference"] == pytest.approx(4.0 - 1.0)  # level 3 (the 9s) left out
    assert levels["difficulty_source"] == "math_level"


def test_difficulty_from_trace_length_is_flagged_length_driven():
    rng = np.random.default_rng(0)
    tokens = np.round(np.exp(rng.normal(6.0, 0.6, size=2000)))
    difficulty = pd.qcut(tokens, 5, labels=False, duplicates="drop") + 1  # the length-quintile fallback
    df = pd.DataFrame({"id": [f"t{i}" for i in range(2000)], "domain": "math", "difficulty": difficulty,
                       "difficulty_source": "length_quantile", "n_target_tokens": tokens,
                       "score_math": tokens * (0.02 + 0.04 * rng.standard_normal(2000))})
    row = difficulty_contrast_table(df, n_boot=300, seed=0).iloc[0]
    assert row["difficulty_source"] == "length_quantile"
    assert row["difference_ci_low"] > 0
    assert row["difference_per_token_ci_low"] < 0 < row["difference_per_token_ci_high"]
    assert row["length_driven"] == True  # noqa: E712  (hard and easy examples never have similar lengths)


def test_sentence_summary_compares_labels_with_unlabelled(sentence_df):
    table = sentence_behaviour_summary(sentence_df, **FAST)
    math = table[table["measurement"] == "math"].set_index("behaviour")
    assert math.loc["verification", "difference"] == 2.0 and math.loc["exploration", "difference"] == 3.0
    assert math.loc["verification", "difference_ci_low"] <= 2.0 <= math.loc["verification", "difference_ci_high"]
    assert math.loc["verification", "mean_per_token"] == pytest.approx((1 / 8 + 3 / 7) / 2)
    assert math.loc["unlabelled", "mean_per_token"] == pytest.approx((-0.5 / 5 + 0.5 / 2) / 2)
    assert np.isnan(math.loc["unlabelled", "difference"]) and pd.isna(math.loc["unlabelled", "length_driven"])
    code = table[table["measurement"] == "code"].iloc[0]
    assert np.isnan(code["difference"])  # no unlabelled code sentence to compare with
    blind = sentence_behaviour_summary(sentence_df.drop(columns=["n_tokens"]), **FAST)
    assert blind["mean_per_token"].isna().all() and blind["length_driven"].isna().all()


def test_standard_tables_finding_tables_are_last_and_optional(instance_df):
    tables = standard_tables(instance_df, **FAST)
    assert list(tables)[-2:] == ["finding1_in_vs_cross_domain", "finding2_difficulty_contrast"]
    other_names = instance_df.assign(domain=["gsm"] * 4 + ["oss"] * 3, difficulty=pd.NA)
    tables = standard_tables(other_names, **FAST)  # no domain named like a measurement, no levels
    assert "finding1_in_vs_cross_domain" not in tables and "finding2_difficulty_contrast" not in tables
