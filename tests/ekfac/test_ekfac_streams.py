"""Several batches at once on CPU threads (``streams``) give the single-stream results."""

from __future__ import annotations

import threading

import pytest
import torch
from ekfac_helpers import make_batches, tiny_llama

from infra_pl.ekfac import Capture, find_tracked_modules, fit_covariance, fit_factors
from infra_pl.ekfac.loss import causal_lm_loss, label_seeds, sample_target_labels
from infra_pl.ekfac.passes import capture_pass, eval_mode
from infra_pl.ekfac.streams import (
    Streams,
    check_streams,
    map_in_streams,
    map_parts,
    split_batch,
    threads_per_stream,
)
from infra_pl.influence import instance_scores, instance_scores_over, query_directions, token_scores, token_scores_over

LENGTHS = [[10, 6, 8], [9, 10, 5], [4, 10, 7], [10, 3, 8], [6, 9]]


@pytest.fixture(scope="module")
def five_batches() -> list[dict[str, torch.Tensor]]:
    return make_batches(LENGTHS, seed=3)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).norm() <= tol * b.norm())


def _assert_factors_equal(left, right) -> None:
    assert list(left.modules) == list(right.modules)
    for name in left.modules:
        one, two = left.modules[name], right.modules[name]
        assert _close(one.activation_covariance, two.activation_covariance), name
        assert _close(one.gradient_covariance, two.gradient_covariance), name
        assert _close(one.lambdas, two.lambdas), name


def test_factors_with_two_streams_equal_one_stream(five_batches):
    model = tiny_llama()
    one = fit_factors(model, five_batches, fisher="empirical", progress=False)
    two = fit_factors(model, five_batches, fisher="empirical", progress=False, streams=2)
    _assert_factors_equal(two, one)


def test_true_fisher_fit_does_not_depend_on_streams(five_batches):
    """One label seed per sequence, drawn in data order: 1, 2 and 3 streams sample the same labels."""
    model = tiny_llama()
    one = fit_factors(model, five_batches, fisher="true", progress=False, seed=7)
    for streams in (2, 3):
        _assert_factors_equal(fit_factors(model, five_batches, fisher="true", progress=False, seed=7, streams=streams), one)
    other_seed = fit_factors(model, five_batches, fisher="true", progress=False, seed=8, streams=2)
    name = next(iter(one.modules))
    assert not _close(other_seed.modules[name].gradient_covariance, one.modules[name].gradient_covariance, 1e-3)


def test_label_seeds_make_each_sequence_independent_of_its_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :2] = -100
    with label_seeds([5, 6, 7]):
        whole = sample_target_labels(logits, labels)
    with label_seeds([6]):
        middle = sample_target_labels(logits[1:2], labels[1:2])
    assert torch.equal(middle, whole[1:2])
    assert torch.equal(whole[:, :2], labels[:, :2])  # non-targets stay -100
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        with label_seeds([1, 2]):
            sample_target_labels(logits, labels)


def test_covariance_streams_count_every_token_once(five_batches):
    model = tiny_llama()
    modules = find_tracked_modules(model)
    state = fit_covariance(model, five_batches, modules, fisher="empirical", progress=False, streams=2)
    tokens = sum(int(b["attention_mask"].sum()) for b in five_batches)
    assert int(state.n_sequences) == sum(len(x) for x in LENGTHS)
    assert all(int(c) == tokens for c in state.activation_counts.values())


def test_query_directions_and_scores_with_streams(five_batches):
    model = tiny_llama()
    factors = fit_factors(model, five_batches, fisher="empirical", progress=False)
    queries = five_batches[:3]
    one = query_directions(model, queries, factors)
    two = query_directions(model, queries, factors, streams=2)
    assert one.names == two.names
    for name in one.per_module:
        assert _close(two.per_module[name], one.per_module[name]), name
    with torch.no_grad():
        expected = [instance_scores(model, b, one) for b in five_batches]
        got = [instance_scores(model, b, one, streams=2) for b in five_batches]
    assert [g.shape for g in got] == [e.shape for e in expected]  # rows come back in batch order
    for g, e in zip(got, expected):
        assert _close(g, e)
    whole = torch.cat(expected)
    for streams in (1, 2, 3):  # a whole loader as one pass, parts of consecutive batches in flight
        assert _close(instance_scores_over(model, five_batches, one, streams=streams), whole)
    with pytest.raises(ValueError, match="no training batches"):
        instance_scores_over(model, [], one)


def test_token_scores_over_a_loader_equal_batch_by_batch(five_batches):
    model = tiny_llama()
    factors = fit_factors(model, five_batches, fisher="empirical", progress=False)
    direction = query_directions(model, five_batches[:1], factors).select(["query_0"])
    got = token_scores_over(model, five_batches[:2], direction)
    assert len(got) == 2
    for part, batch in zip(got, five_batches[:2]):
        assert torch.equal(part, token_scores(model, batch, direction))


def test_eval_mode_restores_training_flags_after_concurrent_users():
    model = tiny_llama().train()
    inside = threading.Event()
    release = threading.Event()
    seen: list[bool] = []

    def other_stream() -> None:
        with eval_mode(model):
            inside.set()
            release.wait(5)
            seen.append(model.training)

    worker = threading.Thread(target=other_stream)
    worker.start()
    assert inside.wait(5)
    with eval_mode(model):
        assert not model.training
    # this stream finished first: the model must stay in eval mode for the other one
    assert not model.training
    release.set()
    worker.join(5)
    assert seen == [False]
    assert model.training and all(m.training for m in model.modules())


def test_capture_ignores_forward_passes_of_other_threads(five_batches):
    model = tiny_llama()
    modules = find_tracked_modules(model)
    recorded: list[str] = []
    capture = Capture(modules, on_activation=lambda name, a, n: recorded.append(name))
    with capture:
        worker = threading.Thread(target=lambda: capture_pass_outside(model, five_batches[0]))
        worker.start()
        worker.join(30)
        assert recorded == []  # another thread's forward went through untouched
        capture_pass(model, five_batches[0], causal_lm_loss, capture, sample_labels=False)
    assert sorted(set(recorded)) == sorted(modules)


def capture_pass_outside(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    with torch.enable_grad():
        causal_lm_loss(model, batch, False).sum().backward()


def test_each_stream_gets_its_share_of_threads():
    assert threads_per_stream(2, 2) == 1 and threads_per_stream(2, 5) == 2 and threads_per_stream(4, 2) == 1
    caller = torch.get_num_threads()
    with Streams(2, lambda: None, threads=4) as pool:
        counts = [pool.submit(lambda _state, _x: torch.get_num_threads(), i).result() for i in range(4)]
    assert counts == [2] * 4
    assert torch.get_num_threads() == caller
    assert len(pool.states()) <= 2  # one state per worker, however many items (None states too)


def test_split_batch_keeps_rows_together():
    batch = {"input_ids": torch.arange(10).view(5, 2), "index": [10, 11, 12, 13, 14], "shift": 3,
             "measurement_weight": torch.ones(5)}
    parts = split_batch(batch, 2)
    assert [p["index"] for p in parts] == [[10, 11], [12, 13, 14]]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert all(p["shift"] == 3 and p["measurement_weight"].shape[0] == len(p["index"]) for p in parts)
    assert len(split_batch(batch, 8)) == 5  # never an empty part


def test_batch_parts_come_back_whole_and_in_order():
    for rows in (5, 1, 4):
        batch = {"input_ids": torch.arange(2 * rows).view(rows, 2)}
        got = map_parts(lambda b: b["input_ids"].t() * 2, batch, 3, dim=1)
        assert torch.equal(got, batch["input_ids"].t() * 2)


def test_streams_keep_order_and_raise_worker_errors():
    assert list(map_in_streams(lambda x: x * x, range(9), 3)) == [x * x for x in range(9)]

    def fail(x: int) -> int:
        if x == 4:
            raise ValueError("row 4 is malformed")
        return x

    with pytest.raises(ValueError, match="row 4 is malformed"):
        list(map_in_streams(fail, range(9), 2))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_stream_counts_are_refused(bad):
    with pytest.raises(ValueError, match="streams must be a positive integer"):
        check_streams(bad)


def test_streams_are_refused_off_cpu():
    with pytest.raises(ValueError, match="CPU threads.*use streams=1"):
        check_streams(2, "cuda")
    assert check_streams(1, "cuda") == 1
