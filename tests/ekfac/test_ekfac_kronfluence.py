"""Agreement with kronfluence 1.0.1 on the same tiny model, data and modules (empirical Fisher).

Compares the normalised covariances A and S, their eigenvalues, Λ, the heuristic damping, and
end to end the pairwise scores ∇L(q)^T H⁻¹ ∇L(z) (kronfluence's measurement set to our loss).
Everything runs in float64 on both sides so eigenvector choice is not blurred by rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from ekfac_helpers import LLAMA_MLP, make_batches, rel_err, tiny_llama

from infra_pl.ekfac import fit_factors, per_example_gradients

kronfluence = pytest.importorskip(
    "kronfluence",
    reason="kronfluence not installed (pip install --no-deps kronfluence==1.0.1 einops einconv opt-einsum)",
)
from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.task import Task  # noqa: E402
from kronfluence.utils.dataset import DataLoaderKwargs  # noqa: E402

BATCH = 4
F64 = torch.float64


class SummedNllTask(Task):
    """kronfluence task: train loss and measurement are the summed target-token NLL of the batch."""

    def compute_train_loss(self, batch, model, sample=False):
        assert not sample, "this comparison uses the empirical Fisher"
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
        )

    def compute_measurement(self, batch, model):
        return self.compute_train_loss(batch, model)

    def get_influence_tracked_modules(self):
        return list(LLAMA_MLP)

    def get_attention_mask(self, batch):
        return batch["attention_mask"]


def collate(examples):
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


@pytest.mark.filterwarnings("ignore:.*GradScaler:FutureWarning")
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_factors_and_scores_match_kronfluence(tmp_path, dtype):
    """float32: both sides at their default dtypes; float64: everything in double, plus scores."""
    # 16 sequences, 203 real tokens: comfortably more than the 32-wide factors, so spectra are not degenerate
    lengths = [[16, 12, 9, 14], [16, 16, 7, 11], [13, 16, 10, 15], [8, 16, 12, 12]]
    batches = make_batches(lengths, prompt_len=4, max_len=16, seed=1)
    examples = [{k: b[k][i] for k in b} for b in batches for i in range(b["input_ids"].shape[0])]
    model = tiny_llama()

    ours = fit_factors(model, batches, fisher="empirical", dtype=dtype, progress=False)

    kron_model = prepare_model(copy.deepcopy(model), SummedNllTask())
    analyzer = Analyzer(
        "ekfac_check", kron_model, SummedNllTask(), cpu=True, disable_tqdm=True, output_dir=str(tmp_path)
    )
    factor_args = FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=True,
        activation_covariance_dtype=dtype,
        gradient_covariance_dtype=dtype,
        eigendecomposition_dtype=F64,
        per_sample_gradient_dtype=dtype,
        lambda_dtype=dtype,
    )
    loader_kwargs = DataLoaderKwargs(collate_fn=collate)
    analyzer.fit_all_factors(
        "f",
        examples,
        per_device_batch_size=BATCH,
        dataloader_kwargs=loader_kwargs,
        factor_args=factor_args,
        overwrite_output_dir=True,
    )
    cov = analyzer.load_covariance_matrices("f")
    eig = analyzer.load_eigendecomposition("f")
    lam = analyzer.load_lambda_matrices("f")

    errors: dict[str, float] = {}
    for name in LLAMA_MLP:
        mine = ours.modules[name]
        kron_a = cov["activation_covariance"][name] / cov["num_activation_covariance_processed"][name]
        kron_s = cov["gradient_covariance"][name] / cov["num_gradient_covariance_processed"][name]
        kron_lambda = lam["lambda_matrix"][name] / lam["num_lambda_processed"][name]
        assert int(cov["num_activation_covariance_processed"][name]) == mine.n_tokens == 203
        assert int(lam["num_lambda_processed"][name]) == mine.n_sequences == 16
        for key, value in {
            "A": rel_err(mine.activation_covariance, kron_a),
            "S": rel_err(mine.gradient_covariance, kron_s),
            "eig(A)": rel_err(mine.eigen.activation_eigenvalues, eig["activation_eigenvalues"][name]),
            "eig(S)": rel_err(mine.eigen.gradient_eigenvalues, eig["gradient_eigenvalues"][name]),
            "Lambda": rel_err(mine.lambdas, kron_lambda),
            "damping": abs(mine.damping - 0.1 * float(kron_lambda.mean())) / mine.damping,
        }.items():
            errors[key] = max(errors.get(key, 0.0), value)
    print(f"vs kronfluence ({dtype}), max relative errors: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) < 1e-4
    if dtype != F64:
        return

    # end to end: kronfluence pairwise scores vs ours, queries = first batch, train = all
    analyzer.compute_pairwise_scores(
        "s",
        "f",
        query_dataset=examples[:BATCH],
        train_dataset=examples,
        per_device_query_batch_size=BATCH,
        per_device_train_batch_size=BATCH,
        dataloader_kwargs=loader_kwargs,
        score_args=ScoreArguments(
            damping_factor=None, per_sample_gradient_dtype=F64, precondition_dtype=F64, score_dtype=F64
        ),
        overwrite_output_dir=True,
    )
    kron_scores = analyzer.load_pairwise_scores("s")["all_modules"]
    query = ours.precondition(per_example_gradients(model, batches[0], dtype=F64))
    train = [per_example_gradients(model, b, dtype=F64) for b in batches]
    scores = torch.cat([sum(torch.einsum("qoi,noi->qn", query[n], g[n]) for n in LLAMA_MLP) for g in train], dim=1)
    score_error = rel_err(scores, kron_scores)
    print(f"vs kronfluence, pairwise scores: max relative error {score_error:.1e}")
    assert score_error < 1e-4
