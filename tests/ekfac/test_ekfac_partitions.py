"""Module partitions: fitting and scoring one group of modules at a time changes nothing."""

from __future__ import annotations

import pytest
import torch
from ekfac_helpers import rel_err, tiny_llama

from infra_pl.ekfac import Factors, find_tracked_modules, fit_factors, layer_shape
from infra_pl.ekfac.partition import check_partitions, factor_elements, split_modules
from infra_pl.ekfac.storage import partition_dir, save_partition, write_partition_index
from infra_pl.influence import instance_scores, measurement_directions, measurement_gradient


@pytest.fixture(scope="module")
def fitted(batches):
    model = tiny_llama()
    tracked = find_tracked_modules(model)
    whole = fit_factors(model, batches, modules=tracked, fisher="true", progress=False, seed=3)
    split = fit_factors(model, batches, modules=tracked, fisher="true", progress=False, seed=3, partitions=2)
    return model, tracked, whole, split


def test_split_is_contiguous_balanced_and_complete(fitted) -> None:
    _, tracked, _, _ = fitted
    shapes = {n: layer_shape(m) for n, m in tracked.items()}
    for n in (1, 2, 3, len(shapes)):
        groups = split_modules(shapes, n)
        assert len(groups) == n and all(groups)
        assert [name for g in groups for name in g] == list(shapes)  # contiguous, model order, each once
    sizes = [sum(factor_elements(shapes[m]) for m in g) for g in split_modules(shapes, 2)]
    assert max(sizes) <= 0.75 * sum(sizes)
    with pytest.raises(ValueError, match="partitions requested"):
        split_modules(shapes, len(shapes) + 1)
    with pytest.raises(ValueError, match="in partitions 0 and 1"):
        check_partitions([[next(iter(shapes))], list(shapes)], list(shapes))
    with pytest.raises(ValueError, match="missing"):
        check_partitions([list(shapes)[:1]], list(shapes))


def test_two_partition_fit_equals_one_fit(fitted) -> None:
    model, tracked, whole, split = fitted
    assert list(split.modules) == list(whole.modules)
    for name in whole.modules:
        a, b = whole.modules[name], split.modules[name]
        assert rel_err(b.activation_covariance, a.activation_covariance) < 1e-6
        assert rel_err(b.gradient_covariance, a.gradient_covariance) < 1e-6  # same sampled labels
        assert rel_err(b.lambdas, a.lambdas) < 1e-5
        assert b.damping == pytest.approx(a.damping, rel=1e-5)
    assert split.check_compatible(model, tracked) == []  # whole-model fingerprints


def test_partitioned_scores_sum_to_the_single_partition_scores(fitted, batches, tmp_path) -> None:
    model, tracked, whole, _ = fitted
    groups = split_modules({n: layer_shape(m) for n, m in tracked.items()}, 2)
    for k, group in enumerate(groups):
        save_partition(fit_factors(model, batches, modules=group, fisher="true", progress=False, seed=3), tmp_path, k)
    write_partition_index(tmp_path, groups, {"model_fingerprint": whole.model_fingerprint,
                                             "module_fingerprints": whole.module_fingerprints,
                                             "untracked_fingerprint": whole.untracked_fingerprint})
    grad = measurement_gradient(model, batches[:1], tracked)
    with torch.no_grad():
        reference = torch.cat([instance_scores(model, b, measurement_directions(whole, {"f": grad})) for b in batches])
    partial = []
    for group in groups:  # one group in memory at a time, read lazily from disk
        part = Factors.load(tmp_path, modules=group)
        assert list(part.modules) == group
        directions = measurement_directions(part, {"f": {n: grad[n] for n in group}})
        with torch.no_grad():
            partial.append(torch.cat([instance_scores(model, b, directions) for b in batches]))
    assert rel_err(sum(partial), reference) < 1e-5
    merged = Factors.load(tmp_path)
    assert list(merged.modules) == [n for g in groups for n in g]
    assert merged.check_compatible(model, tracked) == []
    assert (partition_dir(tmp_path, 1) / "manifest.json").exists()
