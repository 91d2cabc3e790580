"""activation_tokens: A over every real token (kronfluence) or over the positions that predict a target (bergson)."""

import pytest
import torch

from infra_pl.ekfac import Factors, FactorsMismatchError, find_tracked_modules, fit_factors
from tests.influence.influence_helpers import make_batches, tiny_llama

F64 = torch.float64


def test_targets_average_a_over_target_predicting_positions_only(tmp_path):
    model = tiny_llama().double()
    batches = make_batches([[10, 7, 9], [8, 10, 6]], prompt_len=4)
    tracked = find_tracked_modules(model)
    both = {t: fit_factors(model, batches, fisher="empirical", dtype=F64, progress=False, activation_tokens=t)
            for t in ("all", "targets")}
    # The reference: inputs of one MLP projection at the positions whose next label is a target.
    name = next(iter(tracked))
    seen = []
    handle = tracked[name].register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    sums, count = 0, 0
    with torch.no_grad():
        for batch in batches:
            seen.clear()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            predicts = torch.zeros_like(batch["labels"], dtype=torch.bool)
            predicts[:, :-1] = batch["labels"][:, 1:] != -100
            rows = seen[0][predicts]
            sums, count = sums + rows.t() @ rows, count + rows.shape[0]
    handle.remove()
    got = both["targets"].modules[name]
    assert got.n_tokens == count < both["all"].modules[name].n_tokens
    assert torch.allclose(got.activation_covariance, sums / count, rtol=1e-10)
    # S (gradients of every token) is the same either way.
    assert torch.allclose(got.gradient_covariance, both["all"].modules[name].gradient_covariance, rtol=1e-10)
    # The choice travels with the factors, and reuse under the other choice is refused.
    both["targets"].save(tmp_path / "f")
    assert Factors.load(tmp_path / "f").activation_tokens == "targets"
    fit_factors(model, batches, fisher="empirical", dtype=F64, progress=False, activation_tokens="targets",
                output_dir=tmp_path / "g")
    with pytest.raises(FactorsMismatchError, match="activation_tokens 'all' was requested"):
        fit_factors(model, batches, fisher="empirical", dtype=F64, progress=False, output_dir=tmp_path / "g")
