"""Activation checkpointing in the attribution passes (``infra_pl.ekfac.checkpointing``).

Every pass with checkpointing must give what the plain pass gives (factors, measurement gradients,
instance and token scores, the refinement's Fisher-vector products), while the backward really
replays the blocks and the forward really saves less. Tiny Llama and GPT-2 (Conv1D with biases).
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

from infra_pl.ekfac import CovarianceAccumulator, find_tracked_modules, fit_factors
from infra_pl.ekfac.checkpointing import (
    activation_checkpointing,
    checkpoint_blocks,
    checkpointing_runner,
    is_recomputing,
)
from infra_pl.ekfac.loss import causal_lm_logits, causal_lm_loss
from infra_pl.influence import (
    instance_scores,
    measurement_directions,
    measurement_gradient,
    position_contributions,
    query_directions,
    token_scores,
)
from infra_pl.influence.refine import FisherProduct
from infra_pl.runner import InProcessRunner, Pass
from tests.influence.influence_helpers import make_batches, tiny_gpt2, tiny_llama, tiny_lora_llama

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
RTOL = 1e-6


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to RTOL relative to the largest entry (bit-identical in practice on CPU)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = float(expected.abs().max()) or 1.0
    assert float((actual - expected).abs().max()) <= RTOL * scale


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    model = MODELS[request.param]()
    tracked = find_tracked_modules(model)
    batches = make_batches([[10, 6, 8, 4], [9, 10, 5]])
    return model, tracked, batches


@pytest.fixture(scope="module")
def directions(setup):
    model, tracked, batches = setup
    factors = fit_factors(model, batches, fisher="empirical", modules=tracked, progress=False)
    grads = {"a": measurement_gradient(model, make_batches([[10, 7], [8]], seed=1), tracked),
             "b": measurement_gradient(model, make_batches([[9, 9, 6]], seed=2), tracked)}
    return factors, measurement_directions(factors, grads)


def _count_tracked_forwards(tracked):
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    handles = [m.register_forward_hook(count) for m in tracked.values()]
    return calls, handles


# ----------------------------------------------------------------------------- the mechanism
def test_plain_forward_and_gradients_are_bit_identical(setup):
    model, tracked, batches = setup
    batch = batches[0]
    params = [p for p in model.parameters() if p.requires_grad]
    flags = {m: m.training for m in model.modules()}

    def run():
        loss = causal_lm_loss(model, batch, False).sum()
        return causal_lm_logits(model, batch).detach(), torch.autograd.grad(loss, params)

    logits, grads = run()
    with activation_checkpointing(model) as blocks:
        assert len(blocks) == 2 and all("forward" in b.__dict__ for b in blocks)
        assert {m: m.training for m in model.modules()} == flags  # dropout untouched
        logits_ck, grads_ck = run()
    assert all("forward" not in b.__dict__ for b in blocks)  # restored
    assert torch.equal(logits, logits_ck)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_ck))


def test_backward_replays_blocks_and_forward_saves_less(setup):
    """The checkpointed pass must really recompute (tracked layers run again in the backward) and
    keep fewer saved tensors (bytes packed for the backward outside the checkpointed blocks)."""
    model, tracked, batches = setup
    batch = batches[0]

    def one_pass():
        saved = {"bytes": 0}

        def pack(t):
            saved["bytes"] += t.numel() * t.element_size()
            return t

        calls, handles = _count_tracked_forwards(tracked)
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = causal_lm_loss(model, batch, False).sum()
            forward_calls = calls["n"]
            torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        finally:
            for h in handles:
                h.remove()
        return saved["bytes"], forward_calls, calls["n"]

    plain_bytes, plain_fwd, plain_total = one_pass()
    with activation_checkpointing(model):
        ck_bytes, ck_fwd, ck_total = one_pass()
    assert plain_fwd == ck_fwd == len(tracked)
    assert plain_total == len(tracked)  # no replay without checkpointing
    assert ck_total > len(tracked)  # the backward replayed the blocks' tracked layers
    assert ck_bytes < 0.5 * plain_bytes


def test_hooks_record_nothing_during_replays(setup):
    """A Capture sees every tracked layer once per batch, with the same counts, under checkpointing."""
    model, tracked, batches = setup
    seen: list[tuple[str, bool]] = []
    acc = CovarianceAccumulator(model, tracked, fisher="empirical")
    on_activation = acc.capture.on_activation

    def record(name, activation, count):
        seen.append((name, is_recomputing()))
        on_activation(name, activation, count)

    acc.capture.on_activation = record
    calls, handles = _count_tracked_forwards(tracked)
    try:
        with activation_checkpointing(model):
            acc.step(batches[0])
    finally:
        for h in handles:
            h.remove()
    assert calls["n"] > len(tracked)  # replays happened ...
    assert sorted(seen) == sorted((name, False) for name in tracked)  # ... and recorded nothing


# --------------------------------------------------------------------------------- factors
def test_covariance_sums_and_counts_equal(setup):
    model, tracked, batches = setup

    def accumulate(checkpointed: bool):
        acc = CovarianceAccumulator(model, tracked, fisher="true")
        with torch.random.fork_rng():
            torch.manual_seed(3)
            with activation_checkpointing(model) if checkpointed else contextlib.nullcontext():
                for batch in batches:
                    acc.step(batch)
        return acc.state

    plain, ck = accumulate(False), accumulate(True)
    for name in tracked:
        assert_same(ck.activation_sums[name], plain.activation_sums[name])
        assert_same(ck.gradient_sums[name], plain.gradient_sums[name])
        assert int(ck.activation_counts[name]) == int(plain.activation_counts[name])
        assert int(ck.gradient_counts[name]) == int(plain.gradient_counts[name]) == int(plain.activation_counts[name])
    assert int(ck.n_sequences) == int(plain.n_sequences)


@pytest.mark.parametrize("streams", [1, 2])
def test_fit_factors_equal(setup, streams):
    """Covariances A and S, their token counts, Λ and its sequence count (true Fisher: sampled labels,
    so the replays must not disturb the RNG either); two streams replay in their worker threads."""
    model, tracked, batches = setup
    plain = fit_factors(model, batches, modules=tracked, progress=False, streams=streams)
    ck = fit_factors(model, batches, modules=tracked, progress=False, streams=streams, activation_checkpointing=True)
    for name in tracked:
        p, c = plain.modules[name], ck.modules[name]
        assert_same(c.activation_covariance, p.activation_covariance)
        assert_same(c.gradient_covariance, p.gradient_covariance)
        assert_same(c.lambdas, p.lambdas)
        assert (c.n_tokens, c.n_gradient_tokens, c.n_sequences) == (p.n_tokens, p.n_gradient_tokens, p.n_sequences)
        assert c.n_tokens == c.n_gradient_tokens


def test_frozen_model_replays_its_leaf_outputs(setup):
    """Without trainable weights the captures turn tracked outputs into leaves; the replay must do the
    same, or the blocks would save other tensors than in the forward (checkpoint raises)."""
    model, tracked, batches = setup
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        plain = fit_factors(model, batches, modules=tracked, progress=False, fisher="empirical")
        ck = fit_factors(model, batches, modules=tracked, progress=False, fisher="empirical",
                         activation_checkpointing=True)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    for name in tracked:
        assert_same(ck.modules[name].gradient_covariance, plain.modules[name].gradient_covariance)
        assert_same(ck.modules[name].lambdas, plain.modules[name].lambdas)


def test_checkpointing_done_by_the_model_itself(setup):
    """Checkpointing that is not ours (torch.utils.checkpoint in a model's own forward) is recognised too."""
    model, tracked, batches = setup
    plain = CovarianceAccumulator(model, tracked, fisher="empirical")
    foreign = CovarianceAccumulator(model, tracked, fisher="empirical")
    for batch in batches:
        plain.step(batch)
    blocks = checkpoint_blocks(model)
    for block in blocks:
        block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)
    try:
        for batch in batches:
            foreign.step(batch)
    finally:
        for block in blocks:
            del block.forward
    for name in tracked:
        assert_same(foreign.state.gradient_sums[name], plain.state.gradient_sums[name])
        assert int(foreign.state.activation_counts[name]) == int(plain.state.activation_counts[name])


# ---------------------------------------------------------------------------------- scores
def test_measurement_gradients_and_query_directions_equal(setup, directions):
    model, tracked, batches = setup
    factors, _ = directions
    plain = measurement_gradient(model, batches, tracked)
    queries = query_directions(model, batches[:1], factors, tracked)
    with activation_checkpointing(model):
        ck = measurement_gradient(model, batches, tracked)
        queries_ck = query_directions(model, batches[:1], factors, tracked)
    for name in tracked:
        assert_same(ck[name], plain[name])
        assert_same(queries_ck.per_module[name], queries.per_module[name])


@pytest.mark.parametrize("contraction", ["sequence", "token"])
def test_instance_scores_equal(setup, directions, contraction):
    model, tracked, batches = setup
    _, dirs = directions
    plain = [instance_scores(model, b, dirs, tracked, contraction=contraction) for b in batches]
    positions = position_contributions(model, batches[0], dirs, tracked)
    with torch.no_grad(), activation_checkpointing(model):  # scoring runs under the caller's no_grad
        ck = [instance_scores(model, b, dirs, tracked, contraction=contraction) for b in batches]
        positions_ck = position_contributions(model, batches[0], dirs, tracked)
    for a, b in zip(ck, plain):
        assert_same(a, b)
    assert_same(positions_ck, positions)


@pytest.mark.parametrize("measurements", [2, 3])
def test_token_scores_equal(setup, directions, measurements):
    """The token pass is forward-mode under no_grad: nothing is saved, so the blocks run as they are
    (dual tensors for 2 directions, vmap for 3) and the scores are unchanged."""
    model, tracked, batches = setup
    _, dirs = directions
    if measurements == 3:
        dirs = type(dirs)(["a", "b", "c"], {n: torch.cat([v, v[:1] * 0.5]) for n, v in dirs.per_module.items()})
    plain = token_scores(model, batches[0], dirs, tracked)
    with activation_checkpointing(model):
        ck = token_scores(model, batches[0], dirs, tracked)
    assert_same(ck, plain)


@pytest.mark.parametrize("fisher,blocks", [("true", "module"), ("empirical", "all")])
def test_fisher_vector_products_equal(setup, directions, fisher, blocks):
    model, tracked, batches = setup
    _, dirs = directions
    product = FisherProduct(model, tracked, causal_lm_loss, fisher, blocks=blocks, seed=4)
    plain = [product.batch(b, dirs.per_module) for b in batches]
    with activation_checkpointing(model):
        ck = [product.batch(b, dirs.per_module) for b in batches]
    for (values, n), (values_ck, n_ck) in zip(plain, ck):
        assert n == n_ck
        for name in tracked:
            assert_same(values_ck[name], values[name])


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft vs transformers 5
def test_lora_instance_scores_equal():
    model = tiny_lora_llama()
    tracked = find_tracked_modules(model)
    batches = make_batches([[10, 6, 8]])
    grads = {"a": measurement_gradient(model, make_batches([[9, 7]], seed=1), tracked)}
    from infra_pl.influence import Directions

    dirs = Directions(["a"], {n: g.unsqueeze(0) for n, g in grads["a"].items()})
    plain = instance_scores(model, batches[0], dirs, tracked)
    with activation_checkpointing(model) as blocks:
        assert len(blocks) == 2  # the decoder layers inside the PEFT wrapper
        ck = instance_scores(model, batches[0], dirs, tracked)
        grads_ck = measurement_gradient(model, make_batches([[9, 7]], seed=1), tracked)
    assert_same(ck, plain)
    for name in tracked:
        assert_same(grads_ck[name], grads["a"][name])


def test_score_driver_under_checkpointing(tmp_path):
    """The whole scoring run (measurement pass, refinement's Fisher-vector products, instance and
    token passes) inside activation_checkpointing: how ScoreRun.run applies the option."""
    from infra_pl.influence.driver import compute_scores
    from infra_pl.influence.options import ScoreOptions
    from infra_pl.measurements import MeasurementSpec
    from tests.test_drivers import Data

    model = tiny_llama()
    batches = make_batches([[10, 7, 9], [8, 10, 6]])
    factors = fit_factors(model, [{k: v for k, v in b.items() if k != "index"} for b in batches], progress=False)
    spec = MeasurementSpec("q", make_batches([[9, 8]], seed=7))
    options = dict(token_all=True, sentence_top_k=0, removal_top_k=0, refine_iterations=2, refine_examples=None,
                   refine_tolerance=1e-12)

    def scores(folder: str):
        return compute_scores(model, Data(batches), factors, [spec], tmp_path / folder, ScoreOptions(**options),
                              progress=False)

    plain = scores("plain")
    replays = []
    handle = model.model.layers[0].mlp.gate_proj.register_forward_hook(lambda *_: replays.append(is_recomputing()))
    with activation_checkpointing(model):
        ck = scores("ckpt")
    handle.remove()
    assert any(replays)  # the passes really ran checkpointed
    assert_same(torch.tensor(ck.instance_scores["score_q"].to_numpy()), torch.tensor(plain.instance_scores["score_q"].to_numpy()))
    assert_same(torch.tensor(ck.token_scores["score"].to_numpy()), torch.tensor(plain.token_scores["score"].to_numpy()))
    residuals = [torch.tensor(r.measurement_info["q"]["refinement"]["residuals"]) for r in (ck, plain)]
    assert_same(*residuals)


# ------------------------------------------------------------------------- wiring and errors
def test_runner_checkpoints_every_pass(setup):
    model, _, batches = setup
    runner = InProcessRunner(progress=False)
    assert checkpointing_runner(runner, model, enabled=False) is runner
    wrapped = checkpointing_runner(runner, model)
    assert wrapped.progress is False and wrapped.world_size == 1 and wrapped.is_main  # delegated
    blocks = checkpoint_blocks(model)
    seen, order = [], []

    class Own:
        def __enter__(self):
            order.append("own")  # the pass's own memory context, entered inside the checkpointing
            assert all("forward" in b.__dict__ for b in blocks)

        def __exit__(self, *exc):
            return None

    def step(batch):
        seen.append(all("forward" in b.__dict__ for b in blocks))

    wrapped.run(Pass("test", step, memory=Own), batches)
    assert seen == [True, True] and order == ["own"]
    assert all("forward" not in b.__dict__ for b in blocks)


def test_nesting_wraps_once_and_restores(setup):
    model, _, _ = setup
    blocks = checkpoint_blocks(model)
    with activation_checkpointing(model):
        wrapped = [b.__dict__["forward"] for b in blocks]
        with activation_checkpointing(model):
            assert [b.__dict__["forward"] for b in blocks] == wrapped
        assert [b.__dict__["forward"] for b in blocks] == wrapped  # still on for the outer one
    assert all("forward" not in b.__dict__ for b in blocks)


def test_refusals():
    with pytest.raises(ValueError, match="no blocks to checkpoint"):
        with activation_checkpointing(torch.nn.Linear(2, 2)):
            pass
    block = torch.nn.Linear(2, 2)
    with activation_checkpointing(block, blocks=[block]):
        with pytest.raises(ValueError, match="KV cache"):
            block.forward(torch.ones(1, 2, requires_grad=True), past_key_values=object())
    assert "forward" not in block.__dict__
