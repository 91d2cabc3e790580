"""Pairwise scores vs kronfluence 1.0.1 (same tiny Llama, data, modules, empirical Fisher, default damping).

Sign conventions: kronfluence's pairwise score is ∇m(q)ᵀ H⁻¹ ∇L(z), where m is whatever the
task's ``compute_measurement`` returns and L is the training loss. Ours is
∇log p(q)ᵀ H⁻¹ ∇log p(z) = (−∇L(q))ᵀ H⁻¹ (−∇L(z)). Hence, exactly:
  ours = kronfluence with m = the query's summed NLL (the usual kronfluence set-up), and
  ours = −kronfluence with m = the query's log-likelihood (our f for a single query).
Both relations are checked.
"""

from __future__ import annotations

import copy

import pytest
import torch
from influence_helpers import make_batches, rel_err, tiny_llama

from infra_pl.ekfac import find_tracked_modules, fit_factors
from infra_pl.influence import pairwise_scores

kronfluence = pytest.importorskip(
    "kronfluence",
    reason="kronfluence not installed (pip install --no-deps kronfluence==1.0.1 einops einconv opt-einsum)",
)
from kronfluence.analyzer import Analyzer, prepare_model  # noqa: E402
from kronfluence.arguments import FactorArguments, ScoreArguments  # noqa: E402
from kronfluence.task import Task  # noqa: E402
from kronfluence.utils.dataset import DataLoaderKwargs  # noqa: E402

BATCH = 4


def summed_nll(batch, model) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="sum"
    )


class QueryLossTask(Task):
    """Train loss and measurement both the summed target NLL (kronfluence's usual LM set-up)."""

    modules: list[str] = []

    def compute_train_loss(self, batch, model, sample=False):
        assert not sample, "empirical Fisher only"
        return summed_nll(batch, model)

    def compute_measurement(self, batch, model):
        return summed_nll(batch, model)

    def get_influence_tracked_modules(self):
        return list(self.modules)

    def get_attention_mask(self, batch):
        return batch["attention_mask"]


class QueryLogLikelihoodTask(QueryLossTask):
    """Measurement = log p(query) (our f with the query as D_correct)."""

    def compute_measurement(self, batch, model):
        return -summed_nll(batch, model)


def collate(examples):
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


@pytest.mark.filterwarnings("ignore:.*GradScaler:FutureWarning")
def test_pairwise_scores_match_kronfluence(tmp_path):
    batches = make_batches([[16, 12, 9, 14], [16, 16, 7, 11], [13, 16, 10, 15], [8, 16, 12, 12]], prompt_len=4, max_len=16, seed=1)
    for b in batches:
        b.pop("index")
    examples = [{k: b[k][i] for k in b} for b in batches for i in range(b["input_ids"].shape[0])]
    model = tiny_llama()
    modules = find_tracked_modules(model)
    QueryLossTask.modules = list(modules)

    factors = fit_factors(model, batches, fisher="empirical", modules=modules, progress=False)  # damping 0.1·mean(Λ)
    ours = torch.cat([pairwise_scores(model, batches[:1], b, factors, modules) for b in batches], dim=1)  # [4, 16]

    kron_model = prepare_model(copy.deepcopy(model), QueryLossTask())
    loader_kwargs = DataLoaderKwargs(collate_fn=collate)
    analyzer = Analyzer("pairwise", kron_model, QueryLossTask(), cpu=True, disable_tqdm=True, output_dir=str(tmp_path))
    analyzer.fit_all_factors(
        "f",
        examples,
        per_device_batch_size=BATCH,
        dataloader_kwargs=loader_kwargs,
        factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True),
        overwrite_output_dir=True,
    )
    kron = {}
    for label, task in (("loss", QueryLossTask()), ("loglik", QueryLogLikelihoodTask())):
        analyzer.task = task
        analyzer.compute_pairwise_scores(
            label,
            "f",
            query_dataset=examples[:BATCH],
            train_dataset=examples,
            per_device_query_batch_size=BATCH,
            per_device_train_batch_size=BATCH,
            dataloader_kwargs=loader_kwargs,
            score_args=ScoreArguments(damping_factor=None),
            overwrite_output_dir=True,
        )
        kron[label] = analyzer.load_pairwise_scores(label)["all_modules"].double()

    pearson = float(torch.corrcoef(torch.stack([ours.double().flatten(), kron["loss"].flatten()]))[0, 1])
    print(
        f"pairwise vs kronfluence: Pearson {pearson:.6f}, rel err (query loss) {rel_err(ours, kron['loss']):.1e}, "
        f"rel err (−query log-lik) {rel_err(ours, -kron['loglik']):.1e}"
    )
    assert ours.shape == (BATCH, len(examples))
    assert pearson >= 0.999
    assert rel_err(ours, kron["loss"]) < 1e-4
    assert rel_err(ours, -kron["loglik"]) < 1e-4
