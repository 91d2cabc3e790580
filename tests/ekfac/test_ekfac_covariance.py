"""(a) K-FAC factors A and S equal per-token covariances computed by brute force.

The reference runs every sequence alone and unpadded through autograd and sums per-token outer
products in plain loops; so it also checks that padding is masked out of the batched pass.
"""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import LLAMA_MLP, float64_loss, rel_err, sequences, single_sequence_tokens, tiny_llama

import infra_pl.ekfac.loss as ekfac_loss
from infra_pl.ekfac import CovarianceAccumulator, causal_lm_loss, find_tracked_modules, fit_covariance


def brute_force_covariances(model, names, seqs):
    """A = sum_t a a^T / n, S = sum_t g g^T / n over the real tokens of all sequences (loops)."""
    a_sum = {n: 0.0 for n in names}
    s_sum = {n: 0.0 for n in names}
    n_tokens = 0
    for input_ids, labels in seqs:
        tokens = single_sequence_tokens(model, names, input_ids, labels)
        n_tokens += input_ids.shape[1]
        for n in names:
            inputs, grads = tokens[n]
            for t in range(inputs.shape[0]):
                a_sum[n] = a_sum[n] + torch.outer(inputs[t], inputs[t])
                s_sum[n] = s_sum[n] + torch.outer(grads[t], grads[t])
    return {n: a_sum[n] / n_tokens for n in names}, {n: s_sum[n] / n_tokens for n in names}, n_tokens


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def test_default_modules_are_the_mlp_projections(model):
    assert list(find_tracked_modules(model)) == LLAMA_MLP


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_empirical_covariances_match_brute_force(batches, dtype, tol):
    """float32 model + accumulation within 1e-5; a float64 model shows the maths is exact."""
    model = tiny_llama(dtype=dtype)
    modules = find_tracked_modules(model)
    loss_fn = causal_lm_loss if dtype == torch.float32 else float64_loss  # the default upcasts to fp32 only
    state = fit_covariance(model, batches, modules, loss_fn, fisher="empirical", dtype=dtype, progress=False)
    a_ref, s_ref, n_tokens = brute_force_covariances(model, LLAMA_MLP, sequences(batches))
    errors = []
    for name in LLAMA_MLP:
        assert int(state.activation_counts[name]) == n_tokens == int(state.gradient_counts[name])
        errors += [rel_err(state.activation_covariance(name), a_ref[name])]
        errors += [rel_err(state.gradient_covariance(name), s_ref[name])]
    print(f"(a) {dtype}: max relative error of A, S = {max(errors):.2e}")
    assert max(errors) < tol
    assert int(state.n_sequences) == 7


def test_true_fisher_uses_labels_sampled_from_the_model(model, batches, monkeypatch):
    """S with fisher='true' equals the brute force S for the very labels that were sampled."""
    sampled: list[torch.Tensor] = []
    original = ekfac_loss.sample_target_labels

    def recording(logits, labels):
        out = original(logits, labels)
        sampled.append(out)
        return out

    monkeypatch.setattr(ekfac_loss, "sample_target_labels", recording)
    modules = find_tracked_modules(model)
    torch.manual_seed(0)
    accumulator = CovarianceAccumulator(model, modules, fisher="true")
    for batch in batches:
        accumulator.step(batch)
    state = accumulator.state
    relabelled = [dict(b, labels=labels) for b, labels in zip(batches, sampled)]
    for b, labels in zip(batches, sampled):
        assert torch.equal(labels.eq(-100), b["labels"].eq(-100))  # only target positions are resampled
    assert any(not torch.equal(labels, b["labels"]) for b, labels in zip(batches, sampled))
    a_ref, s_ref, _ = brute_force_covariances(model, LLAMA_MLP, sequences(relabelled))
    for name in LLAMA_MLP:
        assert rel_err(state.activation_covariance(name), a_ref[name]) < 1e-5
        assert rel_err(state.gradient_covariance(name), s_ref[name]) < 1e-5


def test_states_from_two_shards_sum_to_the_whole(model, batches):
    """Raw sums + counts merge by addition (what an all-reduce across ranks does)."""
    modules = find_tracked_modules(model)
    whole = fit_covariance(model, batches, modules, fisher="empirical", progress=False)
    first = fit_covariance(model, batches[:1], modules, fisher="empirical", progress=False)
    second = fit_covariance(model, batches[1:], modules, fisher="empirical", progress=False)
    merged = first.merge(second)
    for name in modules:
        assert rel_err(merged.activation_covariance(name), whole.activation_covariance(name)) < 1e-6
        assert rel_err(merged.gradient_covariance(name), whole.gradient_covariance(name)) < 1e-6
    assert int(merged.n_sequences) == int(whole.n_sequences)
    assert len(merged.tensors()) == 4 * len(modules) + 1


def test_bf16_model_accumulates_in_float32(batches):
    model = tiny_llama(dtype=torch.bfloat16)
    modules = find_tracked_modules(model)
    state = fit_covariance(model, batches, modules, fisher="empirical", progress=False)
    assert all(s.dtype == torch.float32 for s in state.activation_sums.values())
    assert all(torch.isfinite(s).all() for s in state.gradient_sums.values())


def test_upper_strip_gram_plus_mirror_equals_the_full_product() -> None:
    """The half-work covariance update (strips on and above the diagonal) then mirroring is exact."""
    from infra_pl.ekfac.covariance import add_gram_upper_, symmetrize_

    generator = torch.Generator().manual_seed(0)
    for dim in (7, 300, 600):  # below the strip threshold, uneven strips, four strips
        x1 = torch.randn(50, dim, generator=generator, dtype=torch.float64)
        x2 = torch.randn(30, dim, generator=generator, dtype=torch.float64)
        target = torch.zeros(dim, dim, dtype=torch.float64)
        add_gram_upper_(target, x1)
        symmetrize_(target)  # mirroring mid-way must not disturb later updates
        add_gram_upper_(target, x2)
        symmetrize_(target)
        expected = x1.t() @ x1 + x2.t() @ x2
        assert torch.allclose(target, expected, atol=1e-10), dim
        assert torch.equal(symmetrize_(target.clone()), target)  # idempotent


def test_layers_sharing_an_input_share_one_activation_eigendecomposition(batches, monkeypatch) -> None:
    """gate_proj and up_proj read the same tensor: their A is bit-identical and is decomposed once."""
    import infra_pl.ekfac.eigen as eigen_module
    from infra_pl.ekfac import eigendecompose, find_tracked_modules, fit_covariance

    model = tiny_llama()
    tracked = find_tracked_modules(model)
    state = fit_covariance(model, batches, tracked, fisher="empirical", progress=False)
    calls = []
    original = eigen_module.symmetric_eigh
    monkeypatch.setattr(eigen_module, "symmetric_eigh", lambda m, name, what: calls.append(what) or original(m, name, what))
    eigen = eigendecompose(state)
    layers = {name.rsplit(".", 2)[0] for name in tracked}
    assert calls.count("activation covariance A") == 2 * len(layers)  # gate/up once + down, per layer
    assert calls.count("gradient covariance S") == len(tracked)
    for layer in layers:
        gate, up = eigen[f"{layer}.mlp.gate_proj"], eigen[f"{layer}.mlp.up_proj"]
        assert torch.equal(gate.activation_eigenvectors, up.activation_eigenvectors)
        assert not torch.equal(gate.gradient_eigenvectors, up.gradient_eigenvectors)
