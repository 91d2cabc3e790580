"""Robustness to the draw of D_correct (App. C, Table 3) and the CI caption."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from infra_pl.report.robustness import ci_coverage_caption, dcorrect_robustness, robustness_wide
from infra_pl.report.validate import ReportInputError


def pairwise(queries: dict[str, int], n_train: int = 300, noise: float = 3.0, seed: int = 0) -> pd.DataFrame:
    """Per-query scores = a component shared by the measurement's queries + independent noise, so the
    mean over more queries ranks the training set more like the mean over all of them."""
    rng = np.random.default_rng(seed)
    frames = []
    for domain, n_queries in queries.items():
        common = rng.normal(size=n_train)
        for q in range(n_queries):
            frames.append(pd.DataFrame({
                "query_id": f"{domain}-{q}", "query_domain": domain, "train_id": [f"t{i}" for i in range(n_train)],
                "score": common + noise * rng.normal(size=n_train),
            }))
    return pd.concat(frames, ignore_index=True)


def _row(table: pd.DataFrame, measurement: str, n: int, kind: str = "subset") -> pd.Series:
    part = table[(table["measurement"] == measurement) & (table["n"] == n) & (table["kind"] == kind)]
    assert len(part) == 1
    return part.iloc[0]


def test_agreement_rises_with_n_and_is_deterministic():
    df = pairwise({"math": 100, "code": 60})
    table = dcorrect_robustness(df, sizes=(10, 25, 50), draws=4, seed=3)
    for name in ("math", "code"):
        spearman = [_row(table, name, n)["spearman_mean"] for n in (10, 25, 50)]
        assert spearman[0] < spearman[1] < spearman[2] < 1.0
        jaccard = [_row(table, name, n)["jaccard_top_k_mean"] for n in (10, 25, 50)]
        assert jaccard[0] < jaccard[2] <= 1.0
        for n in (10, 25, 50):
            row = _row(table, name, n)
            assert row["spearman_min"] <= row["spearman_mean"] <= row["spearman_max"]
            assert row["measurable"] and row["draws"] == 4 and row["top_k"] == 30  # 10% of 300 training examples
        reference = _row(table, name, {"math": 100, "code": 60}[name], "reference")
        assert reference["spearman_mean"] == reference["pearson_mean"] == reference["jaccard_top_k_mean"] == 1.0
    # two disjoint draws agree less than a draw and the reference that contains it
    assert _row(table, "math", 25)["split_spearman_mean"] < _row(table, "math", 25)["spearman_mean"]
    assert math.isnan(_row(table, "code", 50)["split_spearman_mean"])  # 2 x 50 > 60 items
    assert "2n > 60" in _row(table, "code", 50)["note"]
    pd.testing.assert_frame_equal(table, dcorrect_robustness(df, sizes=(10, 25, 50), draws=4, seed=3))
    other = dcorrect_robustness(df, sizes=(10, 25, 50), draws=4, seed=4)
    assert not np.allclose(other["spearman_mean"].to_numpy(float)[:1], table["spearman_mean"].to_numpy(float)[:1])
    # a measurement's draws do not depend on the other measurements present
    alone = dcorrect_robustness(df[df["query_domain"] == "code"], sizes=(10, 25, 50), draws=4, seed=3)
    pd.testing.assert_frame_equal(alone.reset_index(drop=True),
                                  table[table["measurement"] == "code"].reset_index(drop=True))


def test_sizes_at_or_above_the_available_items_are_not_computed():
    df = pairwise({"math": 40, "code": 12})
    table = dcorrect_robustness(df, sizes=(10, 25, 50), draws=2)
    for name, n in (("math", 50), ("code", 25), ("code", 50)):
        row = _row(table, name, n)
        assert not row["measurable"] and row["draws"] == 0
        assert "not measurable: only" in row["note"]
        assert np.isnan(row[["spearman_mean", "pearson_mean", "jaccard_top_k_mean"]].to_numpy(float)).all()
    assert table.attrs["not_measurable"] == [("math", 50), ("code", 25), ("code", 50)]
    assert _row(table, "code", 10)["measurable"]
    wide = robustness_wide(table)
    assert list(wide.columns) == ["measurement", "n=10", "n=25", "n=50", "all"]
    assert list(wide["measurement"]) == ["math", "code"]
    assert np.isnan(wide.loc[1, "n=25"]) and wide.loc[1, "all"] == 1.0


def test_single_query_draws_are_the_per_query_correlations():
    df = pairwise({"math": 3}, n_train=50, noise=1.0)
    table = dcorrect_robustness(df, sizes=(1,), draws=6, top_k=5)
    wide = df.pivot(index="query_id", columns="train_id", values="score")
    reference = wide.mean(axis=0)
    possible = [float(np.corrcoef(wide.loc[q].rank(), reference.rank())[0, 1]) for q in wide.index]
    row = _row(table, "math", 1)
    assert min(abs(row["spearman_min"] - p) for p in possible) < 1e-12
    assert min(abs(row["spearman_max"] - p) for p in possible) < 1e-12
    assert row["top_k"] == 5
    # queries without noise: any subset ranks the training set exactly like all of them
    same = df.assign(score=df.groupby("train_id")["score"].transform("first"))
    exact = dcorrect_robustness(same, sizes=(1, 2), draws=3)
    assert np.allclose(exact["spearman_mean"], 1.0) and np.allclose(exact["jaccard_top_k_min"], 1.0)


def test_missing_domain_and_bad_tables():
    df = pairwise({"math": 5}, n_train=20)
    table = dcorrect_robustness(df.assign(query_domain=None), sizes=(2,), draws=2)
    assert set(table["measurement"]) == {"all queries"}
    with pytest.raises(ReportInputError, match="lacks 1"):
        dcorrect_robustness(df.iloc[1:], sizes=(2,))
    with pytest.raises(ReportInputError, match="duplicated"):
        dcorrect_robustness(pd.concat([df, df.iloc[:1]]), sizes=(2,))
    with pytest.raises(ReportInputError, match="missing required column"):
        dcorrect_robustness(df.drop(columns=["query_domain"]))
    with pytest.raises(ReportInputError, match="no queries of measurement"):
        dcorrect_robustness(df, measurements=["code"])
    with pytest.raises(ValueError, match="sizes"):
        dcorrect_robustness(df, sizes=(0,))


def test_caption_names_what_the_intervals_cover():
    generic = ci_coverage_caption(n_boot=2000)
    assert "95% percentile-bootstrap" in generic and "2000 resamples" in generic
    assert "resampled training examples" in generic
    for source in ("draw of D_correct", "EK-FAC Fisher", "training seed"):
        assert source in generic
    assert "not measured in this run" in generic and "pairwise=True" in generic
    empirical = ci_coverage_caption(fisher="empirical")
    assert "samples no labels" in empirical and "labels sampled" not in empirical
    table = dcorrect_robustness(pairwise({"math": 30, "code": 8}), sizes=(10, 25), draws=3)
    measured = ci_coverage_caption(table, fisher="true")
    row = _row(table, "math", 10)
    assert f"\u03c1 {row['spearman_mean']:.2f}" in measured
    assert "math (30 items)" in measured and "code: not measurable (only 8 items)" in measured
    assert "labels sampled from the model for the EK-FAC Fisher (fisher: true)" in measured
    assert "is not measured" in measured and "not measured in this run" not in measured
