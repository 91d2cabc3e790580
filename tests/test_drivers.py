"""The Lightning-free drivers: the pure API resumes, partitions and reuses like the callbacks.

``fit_factors`` and ``compute_scores`` run the same drivers as ``EKFACFactors``/``InfluenceScores``
with the in-process runner; these tests interrupt them, run them again, and compare with
uninterrupted runs and with the plain per-batch functions.
"""

from __future__ import annotations

import pytest
import torch

from infra_pl.ekfac import fit_factors
from infra_pl.influence import instance_scores_over, measurement_directions, measurement_gradient
from infra_pl.influence.driver import compute_scores
from infra_pl.influence.options import ScoreOptions
from infra_pl.measurements import MeasurementSpec
from tests.influence.influence_helpers import make_batches, tiny_llama

LENGTHS = [[10, 7, 9], [8, 10, 6], [9, 9, 5], [7, 6, 10]]


class Interrupt(RuntimeError):
    pass


class FailingLoader:
    """Yields the batches, but raises after ``fail_after`` batches of pass number ``fail_on`` (1-based)."""

    def __init__(self, batches, fail_on: int | None = None, fail_after: int = 1):
        self.batches, self.fail_on, self.fail_after, self.passes = batches, fail_on, fail_after, 0

    def __iter__(self):
        self.passes += 1
        for k, batch in enumerate(self.batches):
            if self.passes == self.fail_on and k == self.fail_after:
                raise Interrupt(f"interrupted in pass {self.passes}")
            yield batch


def numbered(batches):
    """The batches with ``index`` = position in the whole training set (the data protocol's contract)."""
    start, out = 0, []
    for batch in batches:
        size = int(batch["input_ids"].shape[0])
        out.append({**batch, "index": torch.arange(start, start + size)})
        start += size
    return out


class Data:
    """The smallest :class:`infra_pl.protocol.AttributionData`: fixed batches with ``index``."""

    def __init__(self, batches):
        self.batches = numbered(batches)
        self.fail = False
        self.requested: list[list[int] | None] = []  # the indices of every loader asked for (None: all)

    def attribution_ids(self, split):
        return [f"z{i}" for batch in self.batches for i in batch["index"].tolist()]

    def attribution_dataloader(self, split="train", batch_size=None, indices=None):
        if self.fail:
            raise Interrupt("the training set was read again")
        self.requested.append(None if indices is None else sorted(indices))
        wanted = None if indices is None else set(indices)
        out = []
        for batch in self.batches:
            keep = [r for r, i in enumerate(batch["index"].tolist()) if wanted is None or i in wanted]
            if keep:
                out.append({k: v[keep] for k, v in batch.items()})
        return out


def assert_same_factors(got, want):
    assert set(got.modules) == set(want.modules)
    for name, ref in want.modules.items():
        mod = got.modules[name]
        assert torch.equal(mod.activation_covariance, ref.activation_covariance)
        assert torch.equal(mod.gradient_covariance, ref.gradient_covariance)
        assert torch.equal(mod.lambdas, ref.lambdas)


def test_fit_factors_resumes_an_interrupted_fit_and_reuses_finished_factors(tmp_path, capsys):
    model, batches = tiny_llama(), make_batches(LENGTHS)
    reference = fit_factors(model, batches, progress=False)
    out = tmp_path / "factors"
    with pytest.raises(Interrupt):  # the lambda pass (the loader's second pass) breaks off
        fit_factors(model, FailingLoader(batches, fail_on=2), progress=False, output_dir=out)
    assert (out / "partial").exists() and not (out / "manifest.json").exists()
    capsys.readouterr()
    resumed = fit_factors(model, batches, progress=False, output_dir=out)
    err = capsys.readouterr().err
    assert "1/3 covariance: computing" not in err and "3/3 lambda: computing" in err, err
    assert_same_factors(resumed, reference)
    # Finished factors are reused: no pass reads the loader.
    reused = fit_factors(model, FailingLoader(batches, fail_on=1, fail_after=0), progress=False, output_dir=out)
    assert_same_factors(reused, reference)


def test_fit_factors_resumes_a_partitioned_fit_from_its_finished_partition(tmp_path, capsys):
    model, batches = tiny_llama(), make_batches(LENGTHS)
    reference = fit_factors(model, batches, progress=False, partitions=2)
    out = tmp_path / "factors"
    with pytest.raises(Interrupt):  # passes 1-2 fit partition 1; pass 3 (partition 2's covariance) breaks off
        fit_factors(model, FailingLoader(batches, fail_on=3), progress=False, partitions=2, output_dir=out)
    assert (out / "partition-000" / "manifest.json").exists()
    capsys.readouterr()
    resumed = fit_factors(model, batches, progress=False, partitions=2, output_dir=out)
    assert "reusing finished partition" in capsys.readouterr().err
    assert_same_factors(resumed, reference)
    assert (out / "partitions.json").exists()


def test_compute_scores_equals_the_per_batch_functions_and_resumes_from_its_parts(tmp_path):
    model, batches = tiny_llama(), make_batches(LENGTHS)
    factors = fit_factors(model, batches, progress=False, damping=1e-3)
    query = make_batches([[9, 8]], seed=7)
    spec = MeasurementSpec("q", query)
    data = Data(batches)
    result = compute_scores(model, data, factors, [spec], tmp_path / "scores", progress=False)
    # The reference: ∇f (mean log p over the query sequences), v = H⁻¹∇f, S = vᵀ∇log p(z) per batch.
    named = dict(model.named_modules())
    gradient = measurement_gradient(model, query, {n: named[n] for n in factors.modules})
    directions = measurement_directions(factors, {"q": gradient})
    expected = instance_scores_over(model, batches, directions)[:, 0]
    got = torch.tensor(result.instance_scores.sort_values("index")["score_q"].to_numpy())
    assert torch.allclose(got, expected.double(), rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    assert result.instance_scores_path.exists() and list(result.instance_scores["id"])[:2] == ["z0", "z1"]
    # A second run finds every example scored: it reads no training batch.
    data.fail = True
    again = compute_scores(model, data, factors, [spec], tmp_path / "scores", progress=False)
    assert again.instance_scores["score_q"].equals(result.instance_scores["score_q"])


def test_score_options_refuse_dcorrect_options_beside_explicit_measurements():
    from infra_pl.measurements import TargetLogProb

    with pytest.raises(ValueError, match="n_correct.*not used when measurements are given"):
        ScoreOptions(measurements=[TargetLogProb(name="x", prompts=["2+2="], targets="4")], n_correct=5)
    default = ScoreOptions(n_correct=5).measurement_objects()[0]
    assert default.n == 5


def test_refined_directions_feed_the_scores_and_resume(tmp_path, capsys):
    model, batches = tiny_llama(), make_batches(LENGTHS)
    factors = fit_factors(model, batches, progress=False, fisher="empirical", damping=1e-2)
    spec = MeasurementSpec("q", make_batches([[9, 8]], seed=7))
    data = Data(batches)
    options = dict(token_top_k=0, sentence_top_k=0, removal_top_k=0, refine_examples=None, refine_tolerance=1e-12)
    short = compute_scores(model, data, factors, [spec], tmp_path / "scores",
                           ScoreOptions(refine_iterations=2, **options), progress=False)
    info = short.measurement_info["q"]["refinement"]
    assert info["iterations"] == 2 and info["stop_reason"] == "iterations" and info["examples"] == 12
    assert info["residuals"][2] < info["residuals"][0]  # CG moved away from EK-FAC toward the exact inverse
    # Scores are those of the refined directions.
    expected = instance_scores_over(model, batches, short.directions)[:, 0]
    got = torch.tensor(short.instance_scores.sort_values("index")["score_q"].to_numpy())
    assert torch.allclose(got, expected.double(), rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    # Asking for more iterations resumes from the stored state instead of starting again.
    capsys.readouterr()
    longer = compute_scores(model, data, factors, [spec], tmp_path / "scores",
                            ScoreOptions(refine_iterations=4, **options), progress=False)
    assert "resuming refinement at iteration 2" in capsys.readouterr().err
    assert longer.measurement_info["q"]["refinement"]["residuals"][:3] == info["residuals"]
    assert longer.measurement_info["q"]["refinement"]["iterations"] == 4


def test_factors_from_a_stratified_sample_use_only_the_sampled_examples(tmp_path):
    model, batches = tiny_llama(), numbered(make_batches(LENGTHS))
    ids = [f"z{i}" for i in range(12)]
    strata = ["math"] * 6 + ["code"] * 6
    sampled = fit_factors(model, batches, progress=False, fisher="empirical", train_ids=ids, strata=strata,
                          covariance_max_examples=0.5, lambda_max_examples=4, output_dir=tmp_path / "f")
    from infra_pl.sampling import stratified_sample

    chosen = stratified_sample(strata, 6, 0)
    assert sum(1 for i in chosen if i < 6) == 3  # half of each domain
    from infra_pl.ekfac.fit import rows_of

    reference = fit_factors(model, list(rows_of(batches, chosen)), progress=False, fisher="empirical")
    name = next(iter(reference.modules))
    assert torch.allclose(sampled.modules[name].activation_covariance, reference.modules[name].activation_covariance)
    assert sampled.modules[name].n_sequences == 4  # Λ from its own sample of 4
    assert sampled.sample == {"covariance_max_examples": 0.5, "lambda_max_examples": 4, "seed": 0}
    from infra_pl.ekfac import Factors

    assert Factors.load(tmp_path / "f").sample == sampled.sample
    with pytest.raises(Exception, match="were fitted on the sample"):
        fit_factors(model, batches, progress=False, fisher="empirical", train_ids=ids, output_dir=tmp_path / "f")


def test_refinement_on_a_sample_uses_that_many_sequences(tmp_path):
    model, batches = tiny_llama(), make_batches(LENGTHS)
    factors = fit_factors(model, batches, progress=False, fisher="empirical", damping=1e-2)
    spec = MeasurementSpec("q", make_batches([[9, 8]], seed=7))
    options = ScoreOptions(token_top_k=0, sentence_top_k=0, removal_top_k=0, refine_iterations=1, refine_examples=6)
    result = compute_scores(model, Data(batches), factors, [spec], tmp_path / "scores", options, progress=False)
    assert result.measurement_info["q"]["refinement"]["examples"] == 6


def test_the_default_factor_sample_is_a_count_that_covers_small_sets(tmp_path, monkeypatch, capsys):
    from infra_pl.ekfac import options as factor_options
    from infra_pl.ekfac.options import FactorOptions

    model, batches = tiny_llama(), numbered(make_batches(LENGTHS))
    ids = [f"z{i}" for i in range(12)]
    full = fit_factors(model, batches, progress=False, fisher="empirical", train_ids=ids,
                       covariance_max_examples=None, lambda_max_examples=None, output_dir=tmp_path / "full")
    # auto at N <= its count: every example, no sample recorded, the full-data factors reused as they are.
    monkeypatch.setattr(factor_options, "AUTO_SAMPLE", 12)
    capsys.readouterr()
    same = fit_factors(model, batches, progress=False, fisher="empirical", train_ids=ids, output_dir=tmp_path / "full")
    assert same.sample is None and "on a sample" not in capsys.readouterr().err
    name = next(iter(full.modules))
    assert torch.equal(same.modules[name].lambdas, full.modules[name].lambdas)
    # auto beyond its count: a seeded sample of that many examples in each pass, recorded as a count.
    monkeypatch.setattr(factor_options, "AUTO_SAMPLE", 6)
    sampled = fit_factors(model, batches, progress=False, fisher="empirical", train_ids=ids)
    assert sampled.sample == {"covariance_max_examples": 6, "lambda_max_examples": 6, "seed": 0}
    assert sampled.modules[name].n_sequences == 6
    # Without example ids there is nothing to sample from: every example, and the log says so.
    capsys.readouterr()
    plain = fit_factors(model, batches, progress=False, fisher="empirical")
    assert plain.sample is None and "no example ids to sample from" in capsys.readouterr().err
    assert torch.equal(plain.modules[name].lambdas, full.modules[name].lambdas)
    with pytest.raises(ValueError, match="needs the training ids"):
        fit_factors(model, batches, progress=False, fisher="empirical", covariance_max_examples=4)
    for bad in ("half", 1.5, 0):
        with pytest.raises(ValueError, match="covariance_max_examples"):
            FactorOptions(covariance_max_examples=bad)
