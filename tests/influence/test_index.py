"""The training-gradient index (issue 21): new measurements scored without another training pass.

The index keeps R_n = Q_S,kᵀ ∇log p(z_n) Q_A,k per module; a measurement's score is
Σ_modules ⟨Q_S,kᵀ v Q_A,k, R_n⟩. At full rank that is the exact instance score, which these tests
check against a fresh instance pass, through an interrupted and resumed pass, with module
partitions and through the Lightning callback; lower ranks are reported, with a sane floor.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infra_pl.ekfac import fit_factors
from infra_pl.influence.driver import compute_scores
from infra_pl.influence.index import (
    IndexMismatchError,
    TrainingIndex,
    eigen_basis,
    index_bytes_per_example,
    random_basis,
)
from infra_pl.influence.options import ScoreOptions
from infra_pl.measurements import MeasurementSpec
from infra_pl.scores_store import read_metadata, read_shards
from tests.influence.influence_helpers import make_batches, tiny_llama
from tests.test_drivers import Data, Interrupt

LENGTHS = [[10, 7, 9], [8, 10, 6], [9, 9, 5], [7, 6, 10]]
FULL = 1000  # above every module's dimensions: the index is exact
OFF = dict(token_top_k=0, sentence_top_k=0, removal_top_k=0)


@pytest.fixture(scope="module")
def setting():
    model, batches = tiny_llama(), make_batches(LENGTHS)
    factors = fit_factors(model, batches, progress=False, damping=1e-3)
    known = MeasurementSpec("known", make_batches([[9, 8]], seed=7))
    new = [MeasurementSpec("new_a", make_batches([[10, 6, 9]], seed=11)),
           MeasurementSpec("new_b", make_batches([[5], [8, 7]], seed=12))]
    return model, batches, factors, known, new


def scores(result, names):
    frame = result.instance_scores.sort_values("index")
    return torch.tensor(np.stack([frame[f"score_{n}"].to_numpy() for n in names], axis=1))


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def build_index(tmp_path, setting, rank=FULL, dtype="float32", **options):
    model, batches, factors, known, _ = setting
    data = Data(batches)
    result = compute_scores(model, data, factors, [known], tmp_path / "scored",
                            ScoreOptions(index=True, index_rank=rank, index_dtype=dtype, **OFF, **options),
                            progress=False)
    return data, result


RAW = dict(index_check_examples=0, index_exact_top=0)  # raw index scores: no exact check pass


def from_index(tmp_path, setting, data, specs, out="from_index", **options):
    """Scores from the index; without check options (raw scores) the training set must not be read at all."""
    model, _, factors, _, _ = setting
    checked = any(k in options for k in RAW)
    options = {**RAW, **options}
    data.fail = not checked  # scoring from the index must not read the training set (the check reads a few)
    try:
        return compute_scores(model, data, factors, specs, tmp_path / out,
                              ScoreOptions(from_index=True, index_dir=str(tmp_path / "scored" / "index"), **OFF,
                                           **options), progress=False)
    finally:
        data.fail = False


def test_full_rank_index_scores_equal_exact_instance_scores(tmp_path, setting):
    model, batches, factors, known, new = setting
    data, indexed = build_index(tmp_path, setting)
    plain = compute_scores(model, Data(batches), factors, [known], tmp_path / "plain", ScoreOptions(**OFF),
                           progress=False)
    # Writing the index does not change the instance scores (the same operations).
    assert torch.equal(scores(indexed, ["known"]), scores(plain, ["known"]))
    assert not (tmp_path / "plain" / "index").exists() and "index" not in read_metadata(plain.instance_scores_path)
    meta = read_metadata(indexed.instance_scores_path)
    assert meta["index"]["exact"] and meta["index"]["examples"] == 12
    # The measurement the index was written with, scored back from it.
    again = from_index(tmp_path, setting, data, [known], out="again")
    assert rel(scores(again, ["known"]), scores(plain, ["known"])) <= 1e-5
    # Measurements not known at index time equal a fresh instance pass over the training set.
    fresh = compute_scores(model, Data(batches), factors, new, tmp_path / "fresh", ScoreOptions(**OFF), progress=False)
    got = from_index(tmp_path, setting, data, new)
    names = [s.name for s in new]
    assert rel(scores(got, names), scores(fresh, names)) <= 1e-5
    assert list(got.instance_scores["id"]) == list(fresh.instance_scores["id"])
    # Every output says where the scores come from.
    meta = read_metadata(got.instance_scores_path)
    assert meta["scored_from"]["exact"] and meta["scored_from"]["rank"] == FULL
    info = json.loads((tmp_path / "from_index" / "measurement_info.json").read_text())
    assert all(entry["scored_from"]["kind"] == "eigen" for entry in info.values())


def test_float16_index_and_lower_ranks_agree(tmp_path, setting, capsys):
    model, batches, factors, _, new = setting
    names = [s.name for s in new]
    exact = scores(compute_scores(model, Data(batches), factors, new, tmp_path / "fresh", ScoreOptions(**OFF),
                                  progress=False), names)
    report = []
    for rank, dtype in ((FULL, "float16"), (FULL, "int8"), (16, "float16"), (8, "float32"), (4, "float16")):
        folder = tmp_path / f"r{rank}{dtype}"
        data, _ = build_index(folder, setting, rank=rank, dtype=dtype)
        got = scores(from_index(folder, setting, data, new), names)
        pearson = min(float(np.corrcoef(got[:, m], exact[:, m])[0, 1]) for m in range(len(names)))
        report.append((rank, dtype, rel(got, exact), pearson))
        if rank == FULL and dtype == "float16":
            assert rel(got, exact) <= 2e-3  # float16 storage, each block scaled by its largest magnitude
        elif rank == FULL:  # int8: each entry rounded to 1/254 of its block's largest magnitude
            assert rel(got, exact) <= 2e-2 and pearson > 0.999, report
        else:
            assert pearson > 0.2, report  # a sane floor only: agreement at low rank is measured, not promised
    with capsys.disabled():
        print("\nindex rank, dtype, max rel. error, min Pearson over measurements:",
              ", ".join(f"({r}, {d}, {e:.2e}, {p:.3f})" for r, d, e, p in report))


def test_an_interrupted_index_pass_keeps_its_parts_and_the_rerun_completes_it(tmp_path, setting, monkeypatch):
    from infra_pl.influence import index as index_module

    model, batches, factors, known, new = setting
    monkeypatch.setattr(index_module, "FLUSH_ROWS", 3)  # one part per batch of 3

    class Breaking(Data):
        def attribution_dataloader(self, split="train", batch_size=None, indices=None):
            loaded = super().attribution_dataloader(split, batch_size, indices)
            if self.fail:
                raise Interrupt("the training set was read again")

            def stream():
                for k, batch in enumerate(loaded):
                    if self.breaks and k == 2:
                        raise Interrupt("stopped mid-pass")
                    yield batch

            return stream()

    data = Breaking(batches)
    data.breaks = True
    options = ScoreOptions(index=True, index_rank=FULL, index_dtype="float32", **OFF)
    with pytest.raises(Interrupt):
        compute_scores(model, data, factors, [known], tmp_path / "scored", options, progress=False)
    kept = TrainingIndex.open(tmp_path / "scored" / "index").indices()
    assert kept == set(range(6))  # the two finished batches' parts survive the stop
    data.breaks = False
    compute_scores(model, data, factors, [known], tmp_path / "scored", options, progress=False)
    data.fail = True  # a third run finds scores and index complete: no pass
    compute_scores(model, data, factors, [known], tmp_path / "scored", options, progress=False)
    data.fail = False
    index = TrainingIndex.open(tmp_path / "scored" / "index")
    assert index.indices() == set(range(12))
    held = [i for part in index.groups[0].parts() for i in part["index"]]
    assert sorted(held) == list(range(12))  # no example indexed twice
    # The score parts hold every example once too (the rerun rescored the first six but wrote only the index rows
    # it lacked; the score rows of the interrupted pass were never flushed).
    assert sorted(read_shards(tmp_path / "scored" / "instance_parts").to_pandas()["index"]) == list(range(12))
    fresh = compute_scores(model, Data(batches), factors, new, tmp_path / "fresh", ScoreOptions(**OFF), progress=False)
    names = [s.name for s in new]
    assert rel(scores(from_index(tmp_path, setting, data, new), names), scores(fresh, names)) <= 1e-5


def test_turning_the_index_on_after_a_finished_run_fills_it_without_duplicate_scores(tmp_path, setting):
    model, batches, factors, known, new = setting
    plain = compute_scores(model, Data(batches), factors, [known], tmp_path / "scored", ScoreOptions(**OFF),
                           progress=False)
    data, indexed = build_index(tmp_path, setting)
    assert indexed.instance_scores["score_known"].equals(plain.instance_scores["score_known"])
    assert len(read_shards(tmp_path / "scored" / "instance_parts").to_pandas()) == 12
    assert TrainingIndex.open(tmp_path / "scored" / "index").indices() == set(range(12))


def test_partitioned_index_scores_partitioned_and_whole_runs(tmp_path, setting):
    model, batches, factors, known, new = setting
    names = [s.name for s in new]
    groups = [list(factors.modules)[:3], list(factors.modules)[3:]]
    data, _ = build_index(tmp_path, setting)  # first without partitions: the partitioned pass replaces that group
    compute_scores(model, data, factors, [known], tmp_path / "scored",
                   ScoreOptions(index=True, index_rank=FULL, index_dtype="float32", **OFF), progress=False,
                   partitions=groups)
    assert (tmp_path / "scored" / "index" / "partition-001" / "manifest.json").exists()
    assert not (tmp_path / "scored" / "index" / "manifest.json").exists()  # no module is counted twice
    fresh = scores(compute_scores(model, Data(batches), factors, new, tmp_path / "fresh", ScoreOptions(**OFF),
                                  progress=False), names)
    whole = scores(from_index(tmp_path, setting, data, new), names)
    model_, _, factors_, _, _ = setting
    data.fail = True
    split = scores(compute_scores(model_, data, factors_, new, tmp_path / "split",
                                  ScoreOptions(from_index=True, index_dir=str(tmp_path / "scored" / "index"), **OFF,
                                               **RAW),
                                  progress=False, partitions=groups), names)
    assert rel(whole, fresh) <= 1e-5 and rel(split, fresh) <= 1e-5


def test_a_missing_stale_or_incomplete_index_is_refused(tmp_path, setting):
    model, batches, factors, known, new = setting
    with pytest.raises(FileNotFoundError, match="no training index"):
        compute_scores(model, Data(batches), factors, new, tmp_path / "none",
                       ScoreOptions(from_index=True, **OFF), progress=False)
    data, _ = build_index(tmp_path, setting)
    from dataclasses import replace

    with pytest.raises(IndexMismatchError, match="other model weights"):
        compute_scores(model, Data(batches), replace(factors, model_fingerprint="retrained"), new, tmp_path / "w",
                       ScoreOptions(from_index=True, index_dir=str(tmp_path / "scored" / "index"), **OFF),
                       progress=False)
    fewer = Data(batches[:2])  # another training set: other ids
    with pytest.raises(IndexMismatchError, match="another training set"):
        compute_scores(model, fewer, factors, new, tmp_path / "other",
                       ScoreOptions(from_index=True, index_dir=str(tmp_path / "scored" / "index"), **OFF),
                       progress=False)
    for part in sorted((tmp_path / "scored" / "index").glob("part-*.json"))[-1:]:
        part.unlink()  # a lost part: the index no longer holds every example
    with pytest.raises(IndexMismatchError, match="holds .* of 12"):
        from_index(tmp_path, setting, data, new)
    with pytest.raises(ValueError, match="set one of them"):
        ScoreOptions(index=True, from_index=True)


def test_bases_and_sizes():
    model, batches = tiny_llama(), make_batches(LENGTHS)
    factors = fit_factors(model, batches, progress=False)
    basis = eigen_basis(factors, 4)
    for name, module in basis.modules.items():  # orthonormal columns, the top eigenvalues first
        eig = factors.modules[name].eigen
        assert torch.allclose(module.left.t() @ module.left, torch.eye(4), atol=1e-5)
        top = eig.gradient_eigenvalues.sort(descending=True).values[:4]
        assert torch.allclose(torch.diag(module.left.t() @ factors.modules[name].gradient_covariance @ module.left),
                              top.float(), rtol=1e-3, atol=1e-6)
    assert 0 < basis.info["energy"] < 1 and eigen_basis(factors, FULL).info["energy"] == pytest.approx(1.0)
    shapes = {n: m.shape.matrix_shape for n, m in factors.modules.items()}
    assert random_basis(shapes, 4).digest() == random_basis(shapes, 4).digest() != random_basis(shapes, 4, 1).digest()
    assert index_bytes_per_example([(32, 16), (16, 32)], 8, "float16") == 2 * 64 * 2 + 2 * 4
    assert index_bytes_per_example([(32, 16)], 64, "float32") == 32 * 16 * 4
    assert index_bytes_per_example([(32, 16), (16, 32)], 8, "int8") == 2 * 64 + 2 * 4


def test_the_index_check_scores_a_sample_and_the_extremes_exactly_and_calibrates_the_rest(tmp_path, setting):
    model, batches, factors, _, new = setting
    names = [s.name for s in new]
    fresh = scores(compute_scores(model, Data(batches), factors, new, tmp_path / "fresh", ScoreOptions(**OFF),
                                  progress=False), names).double()
    data, _ = build_index(tmp_path, setting, rank=4)
    raw = scores(from_index(tmp_path, setting, data, new, out="raw"), names).double()
    data.requested.clear()
    got = from_index(tmp_path, setting, data, new, out="checked", index_check_examples=5, index_exact_top=1)
    values = scores(got, names).double()
    frame = got.instance_scores.sort_values("index")
    exact_rows = frame["index"][frame["exact_score"]].to_list()
    # Only the chosen examples were read: the check sample and each measurement's highest and lowest.
    assert data.requested == [exact_rows]
    extremes = {int(raw[:, m].argmax()) for m in range(len(names))} | {int(raw[:, m].argmin()) for m in range(len(names))}
    assert extremes <= set(exact_rows) and 5 <= len(exact_rows) <= 5 + len(extremes) < 12
    assert rel(values[exact_rows], fresh[exact_rows]) <= 1e-5  # exactly scored rows equal an instance pass
    check = read_metadata(got.instance_scores_path)["scored_from"]["check"]
    others = [i for i in range(12) if i not in exact_rows]
    for m, name in enumerate(names):
        line = check[name]
        assert line["examples"] == 5
        calibrated = line["slope"] * raw[others, m] + line["intercept"]  # every other row: the calibrated index score
        assert torch.allclose(values[others, m], calibrated, rtol=1e-9, atol=1e-12)
    # The line and the agreement are those of the sample (least squares and Pearson on it, recomputed here).
    from infra_pl.sampling import sample_indices

    sample = sample_indices([None] * 12, 5, 0, "index_check_examples")  # this data has no domains: one stratum
    assert set(sample) <= set(exact_rows)
    for m, name in enumerate(names):
        slope, intercept = np.polyfit(raw[sample, m].numpy(), fresh[sample, m].numpy(), 1)
        assert check[name]["slope"] == pytest.approx(slope, rel=1e-6)
        assert check[name]["intercept"] == pytest.approx(intercept, rel=1e-6, abs=1e-12)
        assert check[name]["pearson"] == pytest.approx(np.corrcoef(raw[sample, m], fresh[sample, m])[0, 1], rel=1e-6)
    # A rerun reads nothing: the exact scores of the check are kept (resumable like every pass).
    again = from_index(tmp_path, setting, data, new, out="checked", index_check_examples=5, index_exact_top=1)
    assert data.requested == [exact_rows] and torch.equal(scores(again, names).double(), values)
    # Calibration puts the index scores on the exact scale: closer to exact than the raw rank-4 scores.
    assert float((values - fresh).abs().mean()) < float((raw - fresh).abs().mean())


def test_pairwise_scores_from_the_index_are_checked_and_calibrated_per_query(tmp_path, setting):
    import pandas as pd

    from tests.test_drivers import numbered

    model, batches, factors, _, _ = setting
    items = MeasurementSpec("items", numbered(make_batches([[10, 6, 9], [7, 8]], seed=11)), split="eval",
                            indices=list(range(5)))
    fresh = compute_scores(model, Data(batches), factors, [items], tmp_path / "fresh", ScoreOptions(pairwise=True, **OFF),
                           progress=False)
    want = pd.read_parquet(fresh.pairwise_scores_path).set_index(["query_id", "train_id"])["score"]
    data, _ = build_index(tmp_path, setting, rank=4)
    got = from_index(tmp_path, setting, data, [items], pairwise=True, index_check_examples=6, index_exact_top=0)
    pairwise = pd.read_parquet(got.pairwise_scores_path).set_index(["query_id", "train_id"])
    assert len(pairwise) == 5 * 12 and pairwise["exact_score"].sum() == 5 * 6
    exact = pairwise[pairwise["exact_score"]]
    assert np.allclose(exact["score"], want.loc[exact.index], rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    summary = read_metadata(got.pairwise_scores_path)["scored_from"]["pairwise_check"]
    assert summary["examples"] == 6 and -1 <= summary["pearson_min"] <= summary["pearson_mean"] <= 1
    # Per query, the other rows are one line (slope, intercept) of the raw index scores, fitted on the sample.
    raw = pd.read_parquet(from_index(tmp_path, setting, data, [items], out="raw", pairwise=True).pairwise_scores_path)
    raw = raw.set_index(["query_id", "train_id"])["score"]
    for query, rows in pairwise.groupby(level="query_id"):
        sample = rows[rows["exact_score"]].index
        slope, intercept = np.polyfit(raw.loc[sample], want.loc[sample], 1)
        others = rows[~rows["exact_score"]].index
        assert np.allclose(rows.loc[others, "score"], slope * raw.loc[others] + intercept, rtol=1e-6, atol=1e-9)
