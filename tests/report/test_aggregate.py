"""Tables on the hand-made fixture tables (conftest.py lists the values the numbers come from)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from infra_pl.report.aggregate import (
    behaviour_summary,
    cross_domain_table,
    domain_difficulty_table,
    group_summary,
    sentence_behaviour_summary,
    sentence_behaviours,
    standard_tables,
    without_behaviour_table,
    write_tables,
)
from infra_pl.report.validate import ReportInputError

from .test_bootstrap import textbook_bootstrap

FAST = {"n_boot": 200, "seed": 0}


def _row(table: pd.DataFrame, **keys) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for column, value in keys.items():
        mask &= (table[column].isna() if value is None else table[column] == value).to_numpy(dtype=bool, na_value=False)
    assert mask.sum() == 1, f"{keys} matched {mask.sum()} rows"
    return table[mask].iloc[0]


def test_group_summary_by_domain_hand_computed(instance_df):
    table = group_summary(instance_df, "domain", **FAST)
    assert list(table.columns) == ["domain", "measurement", "n", "mean", "mean_ci_low", "mean_ci_high", "median",
                                   "share_positive", "share_ci_low", "share_ci_high",
                                   "mean_per_token", "mean_per_token_ci_low", "mean_per_token_ci_high", "n_no_tokens"]
    assert list(table["domain"]) == ["code", "code", "math", "math"]  # sorted groups, measurements in column order
    math_math = _row(table, domain="math", measurement="math")
    assert (math_math["n"], math_math["mean"], math_math["median"], math_math["share_positive"]) == (4, 1.0, 1.5, 0.75)
    math_code = _row(table, domain="math", measurement="code")
    assert (math_code["mean"], math_code["median"], math_code["share_positive"]) == (0.0, -0.5, 0.25)  # 0 is not > 0
    code_math = _row(table, domain="code", measurement="math")
    assert (code_math["mean"], code_math["median"]) == (2.0, 3.0)
    assert code_math["share_positive"] == pytest.approx(2 / 3)
    code_code = _row(table, domain="code", measurement="code")
    assert (code_code["mean"], code_code["median"], code_code["share_positive"]) == (2.0, 1.0, 1.0)


def test_group_summary_cis_equal_textbook_bootstrap(instance_df):
    table = group_summary(instance_df, "domain", n_boot=400, seed=7, ci=0.9)
    for domain in ("math", "code"):
        for measurement in ("math", "code"):
            values = instance_df.loc[instance_df["domain"] == domain, f"score_{measurement}"].to_numpy()
            mean_ci, share_ci = textbook_bootstrap(values, 400, 7, 0.9)
            row = _row(table, domain=domain, measurement=measurement)
            np.testing.assert_allclose([row["mean_ci_low"], row["mean_ci_high"]], mean_ci)
            np.testing.assert_allclose([row["share_ci_low"], row["share_ci_high"]], share_ci)
            assert row["mean_ci_low"] <= row["mean"] <= row["mean_ci_high"]


def test_group_summary_is_reproducible_and_measurements_selectable(instance_df):
    first = group_summary(instance_df, "category", measurements=["code"], **FAST)
    again = group_summary(instance_df, "category", measurements=["score_code"], **FAST)
    pd.testing.assert_frame_equal(first, again)
    assert set(first["measurement"]) == {"code"}
    assert list(first["category"]) == ["bash", "fobar", "python", "sv"]
    assert _row(first, category="python")["mean"] == 1.0


def test_cross_domain_table(instance_df):
    table = cross_domain_table(instance_df, **FAST)
    assert list(table["domain"]) == ["code", "math"]
    assert list(table["n"]) == [3, 4]
    math = _row(table, domain="math")
    assert math["math_mean"] == 1.0 and math["code_mean"] == 0.0  # math -> code
    code = _row(table, domain="code")
    assert code["math_mean"] == 2.0 and code["code_mean"] == 2.0  # code -> math
    assert code["math_share_positive"] == pytest.approx(2 / 3)
    for m in ("math", "code"):
        assert (table[f"{m}_ci_low"] <= table[f"{m}_mean"]).all() and (table[f"{m}_mean"] <= table[f"{m}_ci_high"]).all()


def test_domain_difficulty_table_keeps_missing_difficulty(instance_df):
    table = domain_difficulty_table(instance_df, **FAST)
    assert str(table["difficulty"].dtype) == "Int64"
    assert _row(table, domain="math", difficulty=1, measurement="math")["mean"] == 1.5
    assert _row(table, domain="math", difficulty=1, measurement="code")["mean"] == -0.5
    assert _row(table, domain="math", difficulty=5, measurement="math")["mean"] == 0.5
    assert _row(table, domain="code", difficulty=2, measurement="code")["mean"] == 2.5
    missing = _row(table, domain="code", difficulty=None, measurement="math")
    assert (missing["n"], missing["mean"], missing["share_positive"]) == (1, -2.0, 0.0)
    assert missing["mean_ci_low"] == missing["mean_ci_high"] == -2.0  # one value: degenerate interval
    # float difficulties (Parquet with nulls) are shown as integers too
    floats = instance_df.assign(difficulty=instance_df["difficulty"].astype("float64"))
    assert str(domain_difficulty_table(floats, **FAST)["difficulty"].dtype) == "Int64"


def test_behaviour_summary_with_vs_without(instance_df):
    table = behaviour_summary(instance_df, **FAST)
    assert list(dict.fromkeys(table["behaviour"])) == ["verification", "exploration"]
    assert table.attrs["not_observed"] == ["backtracking", "subgoal_setting", "backward_chaining"]
    ver = _row(table, behaviour="verification", measurement="math")  # with: a, c, f
    assert (ver["n_with"], ver["mean_with"], ver["n_without"], ver["mean_without"]) == (3, 1.0, 4, 1.75)
    assert ver["difference"] == -0.75 and ver["share_of_examples"] == pytest.approx(3 / 7)
    exp = _row(table, behaviour="exploration", measurement="code")  # with: b, e
    assert exp["mean_with"] == 0.0 and exp["mean_without"] == pytest.approx(1.2)  # [0, -1, 2, 1, 4] / 5
    raw = table.loc[:, "behaviour":"difference_per_token_ci_high"]
    assert not raw.isna().any().any()  # nobody backtracks: no row of NaN for it


def test_behaviour_summary_refuses_untagged_or_empty_behaviours(instance_df):
    """Real datasets carry no behaviour labels: untagged counts or no behaviour at all is an error, not NaN."""
    from infra_pl.report.validate import ReportInputError

    untagged = instance_df.assign(behaviour_verification=np.nan)
    with pytest.raises(ReportInputError, match="never tagged"):
        behaviour_summary(untagged, **FAST)
    empty = instance_df.assign(behaviour_verification=0, behaviour_exploration=0)
    with pytest.raises(ReportInputError, match="no example shows any"):
        behaviour_summary(empty, **FAST)


def test_sentence_behaviour_summary_counts_each_label(sentence_df):
    table = sentence_behaviour_summary(sentence_df, **FAST)
    math = table[table["measurement"] == "math"]
    assert list(math["behaviour"]) == ["verification", "exploration", "unlabelled"]
    ver = _row(math, behaviour="verification")
    assert (ver["n_sentences"], ver["mean"], ver["median"]) == (2, 2.0, 2.0)  # sentences 0 and 2
    assert ver["mean_token_sum"] == pytest.approx(1.65)
    assert _row(math, behaviour="exploration")["mean"] == 3.0  # the two-label sentence counts here too
    unl = _row(math, behaviour="unlabelled")
    assert (unl["n_sentences"], unl["mean"], unl["share_positive"]) == (2, 0.0, 0.5)
    assert _row(table, behaviour="exploration", measurement="code")["mean"] == -1.0
    only_code = sentence_behaviour_summary(sentence_df, measurements=["code"], **FAST)
    assert list(only_code["measurement"]) == ["code"]


def test_without_behaviour_table_is_additive_approximation(sentence_df):
    rows = sentence_df[sentence_df["measurement"] == "math"]
    table = without_behaviour_table(rows, full_score=1.0)
    assert list(table["behaviour"]) == ["verification", "exploration"]
    assert _row(table, behaviour="verification")["score_without_approx"] == 1.0 - 4.0
    assert _row(table, behaviour="exploration")["sum_removal"] == 3.0


@pytest.mark.parametrize("value, expected", [
    (None, []), (float("nan"), []), ([], []), (np.array(["exploration"], dtype=object), ["exploration"]),
    ("['verification', 'exploration']", ["verification", "exploration"]), ("verification;exploration",
                                                                          ["verification", "exploration"]),
    ("", []),
])
def test_sentence_behaviours_parses_storage_shapes(value, expected):
    assert sentence_behaviours(value) == expected


# --------------------------------------------------------------------------- validation


def test_missing_score_columns_are_named(instance_df):
    with pytest.raises(ReportInputError, match=r"score_aime"):
        group_summary(instance_df, "domain", measurements=["aime"])
    with pytest.raises(ReportInputError, match=r"no 'score_<measurement>' columns"):
        group_summary(instance_df.drop(columns=["score_math", "score_code"]), "domain")


def test_missing_required_columns_are_named(instance_df):
    with pytest.raises(ReportInputError, match=r"\['domain'\]"):
        cross_domain_table(instance_df.drop(columns=["domain"]))
    with pytest.raises(ReportInputError, match=r"difficulty"):
        domain_difficulty_table(instance_df.drop(columns=["difficulty"]))
    with pytest.raises(ReportInputError, match=r"behaviour_"):
        behaviour_summary(instance_df.drop(columns=[c for c in instance_df if c.startswith("behaviour_")]))
    with pytest.raises(ReportInputError, match=r"score_removal"):
        sentence_behaviour_summary(pd.DataFrame({"id": [], "measurement": [], "behaviours": []}))


def test_nan_scores_error_says_how_many_rows(instance_df, sentence_df):
    bad = instance_df.copy()
    bad.loc[[1, 4], "score_code"] = np.nan
    with pytest.raises(ReportInputError, match=r"2 of 7 row\(s\).*'score_code'.*b, e"):
        group_summary(bad, "domain")
    bad_sentences = sentence_df.copy()
    bad_sentences.loc[0, "score_removal"] = np.inf
    with pytest.raises(ReportInputError, match=r"1 of 5 row\(s\)"):
        sentence_behaviour_summary(bad_sentences)


def test_non_numeric_scores_are_refused(instance_df):
    with pytest.raises(ReportInputError, match="must be numeric"):
        group_summary(instance_df.assign(score_math=["x"] * 7), "domain")


def test_empty_input_gives_empty_tables(instance_df):
    empty = instance_df.iloc[0:0]
    table = group_summary(empty, "domain", **FAST)
    assert table.empty and "mean_ci_low" in table.columns
    assert cross_domain_table(empty, **FAST).empty
    with pytest.raises(ReportInputError, match="no example shows any"):
        behaviour_summary(empty, **FAST)  # nothing to compare is an error, not a table of NaN


# --------------------------------------------------------------------------- bundles and files


def test_standard_tables_and_write_tables(tmp_path, instance_df, sentence_df):
    tables = standard_tables(instance_df, sentence_df, **FAST)
    assert list(tables) == ["domain_difficulty", "cross_domain", "by_domain", "by_category", "behaviours",
                            "sentence_behaviours", "finding1_in_vs_cross_domain", "finding2_difficulty_contrast"]
    written = write_tables(tmp_path, tables)
    for name, paths in written.items():
        assert paths["csv"].exists() and paths["json"].exists()
        records = json.loads(paths["json"].read_text())  # strict JSON: no NaN tokens
        assert len(records) == len(tables[name])
    behaviours = json.loads(written["behaviours"]["json"].read_text())
    assert {r["behaviour"] for r in behaviours} == {"verification", "exploration"}  # no all-None rows
    assert all(r["mean_with"] is not None for r in behaviours)
    difficulty = json.loads(written["domain_difficulty"]["json"].read_text())
    assert {r["difficulty"] for r in difficulty} == {1, 2, 5, None}
    csv = pd.read_csv(written["cross_domain"]["csv"])
    assert list(csv["math_mean"]) == [2.0, 1.0]
    pd.testing.assert_frame_equal(tables["cross_domain"], cross_domain_table(instance_df, **FAST))


def test_write_tables_refuses_unsafe_names(tmp_path, instance_df):
    with pytest.raises(ReportInputError, match="safe file name"):
        write_tables(tmp_path, {"../evil": instance_df})
