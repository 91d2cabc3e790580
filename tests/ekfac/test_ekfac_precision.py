"""bfloat16 operands for the EK-FAC products (``compute_dtype``): sums stay float32, scores stay close."""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import make_batches, tiny_llama

from infra_pl.ekfac import eigendecompose, find_tracked_modules, fit_covariance, fit_factors, fit_lambda
from infra_pl.ekfac.covariance import add_gram_upper_
from infra_pl.ekfac.precision import is_reduced, native_bf16, resolve_compute_dtype
from infra_pl.influence import instance_scores_over, query_directions

LENGTHS = [[10, 6, 8], [9, 10, 5], [4, 10, 7], [10, 3, 8], [6, 9]]


@pytest.fixture(scope="module")
def batches() -> list[dict[str, torch.Tensor]]:
    return make_batches(LENGTHS, seed=5)


@pytest.fixture(scope="module")
def fits(batches):
    model = tiny_llama()
    full = fit_factors(model, batches, fisher="empirical", progress=False)
    reduced = fit_factors(model, batches, fisher="empirical", progress=False, compute_dtype="bfloat16")
    return model, full, reduced


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_resolve_compute_dtype():
    assert resolve_compute_dtype(None) == torch.float32
    assert resolve_compute_dtype(None, torch.float64) == torch.float64
    assert resolve_compute_dtype("bfloat16") == torch.bfloat16
    assert resolve_compute_dtype(torch.bfloat16, torch.float64) == torch.bfloat16
    assert resolve_compute_dtype("float32", torch.float64) == torch.float64  # reference fits stay float64
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        resolve_compute_dtype("fp8")
    with pytest.raises(ValueError, match=r"compute_dtype must be one of \[.float32., .bfloat16.\], got .float16."):
        resolve_compute_dtype(torch.float16)
    assert is_reduced(torch.bfloat16) and not is_reduced(torch.float32)
    assert isinstance(native_bf16("cpu"), bool) and native_bf16("meta") is False


def test_bad_compute_dtype_fails_before_any_pass(batches):
    model = tiny_llama()

    class Exploding:
        def __iter__(self):
            raise AssertionError("the loader must not be read when the options are invalid")

    with pytest.raises(ValueError, match="compute_dtype"):
        fit_factors(model, Exploding(), fisher="empirical", progress=False, compute_dtype="half")
    with pytest.raises(ValueError, match="compute_dtype"):
        fit_covariance(model, Exploding(), {}, fisher="empirical", progress=False, compute_dtype="half")


def test_reduced_gram_is_added_in_float32():
    x = torch.randn(64, 300)
    target = torch.zeros(300, 300)
    add_gram_upper_(target, x.bfloat16())
    assert target.dtype == torch.float32
    # every entry, not only the upper triangle: the bfloat16 path forms the full product
    assert _rel(target, x.t() @ x) < 1e-2


def test_bfloat16_factors_are_float32_and_close(fits):
    _, full, reduced = fits
    # bfloat16 operands round each product (2^-9 relative): close, but really not float32. Measured
    # here: covariances 0.1-0.2%; Λ 0.5-0.8%, one module 3.4%: its eigenbasis itself moved (the tiny
    # model has near-equal eigenvalues), which the fixed-basis test below takes out.
    bounds = {"activation_covariance": 1e-2, "gradient_covariance": 1e-2, "lambdas": 1e-1}
    for name, one in full.modules.items():
        two = reduced.modules[name]
        for attribute, bound in bounds.items():
            got, want = getattr(two, attribute), getattr(one, attribute)
            assert got.dtype == want.dtype == torch.float32, (name, attribute)
            error = _rel(got, want)
            assert 0 < error < bound, (name, attribute, error)


def test_bfloat16_lambda_in_a_fixed_basis(batches):
    """The same eigenbasis for both: Λ differs only by the rounding of the rotations' operands."""
    model = tiny_llama()
    modules = find_tracked_modules(model)
    eigen = eigendecompose(fit_covariance(model, batches, modules, fisher="empirical", progress=False), progress=False)
    full = fit_lambda(model, batches, modules, eigen, fisher="empirical", progress=False)
    reduced = fit_lambda(model, batches, modules, eigen, fisher="empirical", progress=False, compute_dtype="bfloat16")
    for name in modules:
        assert reduced.sums[name].dtype == torch.float32
        assert 0 < _rel(reduced.lambdas(name), full.lambdas(name)) < 2e-2, name


def test_bfloat16_pairwise_scores_track_float32(fits, batches):
    model, full, reduced = fits
    queries, train = batches[:2], batches[2:]
    with torch.no_grad():
        exact = instance_scores_over(model, train, query_directions(model, queries, full))
        directions = query_directions(model, queries, reduced, dtype=torch.bfloat16)
        assert directions.dtype == torch.bfloat16
        approx = instance_scores_over(model, train, directions)
    assert approx.dtype == torch.float32  # each module's bfloat16 product is summed in float32
    assert approx.shape == exact.shape
    pearson = torch.corrcoef(torch.stack([approx.flatten().double(), exact.flatten().double()]))[0, 1]
    assert pearson > 0.999
    assert 0 < _rel(approx, exact) < 5e-2


def test_influence_scores_pairwise_dtype_is_checked_at_construction():
    from infra_pl.callbacks import InfluenceScores

    assert InfluenceScores(pairwise_dtype="bfloat16").options.torch_pairwise_dtype == torch.bfloat16
    assert InfluenceScores().options.torch_pairwise_dtype == torch.float32
    with pytest.raises(ValueError, match="pairwise_dtype must be one of"):
        InfluenceScores(pairwise_dtype="fp16")


def test_bfloat16_captures_pad_tokens_to_a_bucket_exactly(batches, monkeypatch):
    """Padding T to a multiple of 64 (bounded oneDNN shapes) changes no sum and no token count."""
    import infra_pl.ekfac.capture as capture_module

    x = torch.randn(2, 10, 3)
    assert capture_module._bucket_tokens(x) is x  # float32 is left alone
    padded = capture_module._bucket_tokens(x.bfloat16())
    assert padded.shape == (2, 64, 3) and torch.equal(padded[:, :10], x.bfloat16()) and not padded[:, 10:].any()

    model = tiny_llama()
    modules = find_tracked_modules(model)
    bucketed = fit_covariance(model, batches, modules, fisher="empirical", progress=False, compute_dtype="bfloat16")
    monkeypatch.setattr(capture_module, "TOKEN_BUCKET", 1)
    plain = fit_covariance(model, batches, modules, fisher="empirical", progress=False, compute_dtype="bfloat16")
    for name in modules:
        assert torch.equal(bucketed.activation_counts[name], plain.activation_counts[name])
        assert torch.equal(bucketed.gradient_counts[name], plain.gradient_counts[name])
        # other shapes, other kernel blocking: only the summation order differs (4e-6 seen),
        # far below the 2^-9 = 2e-3 rounding a wrongly counted or non-zero pad would show
        assert _rel(bucketed.activation_sums[name], plain.activation_sums[name]) < 1e-4
        assert _rel(bucketed.gradient_sums[name], plain.gradient_sums[name]) < 1e-4


def test_position_contributions_keep_the_batch_length_with_bfloat16_directions(fits, batches):
    from infra_pl.influence import position_contributions

    model, _, reduced = fits
    directions = query_directions(model, batches[:1], reduced, dtype=torch.bfloat16)
    batch = batches[2]
    with torch.no_grad():
        split = position_contributions(model, batch, directions)
        total = instance_scores_over(model, [batch], directions)
    assert split.shape == (len(directions), *batch["input_ids"].shape)
    # two bfloat16 contractions (per position vs per sequence) round differently: 1.7e-3 seen
    assert _rel(split.sum(-1).t(), total) < 1e-2
