"""kronfluence's EK-FAC on the same model, data, modules and Fisher, as an outside reference.

Optional: used only when ``kronfluence`` is importable. Wiring (facts about kronfluence 1.0.1):
its pairwise score is ∇m(q)ᵀ H⁻¹ ∇L(z) with m the task's measurement and L its training loss.
With m = the query's summed NLL, both gradients are minus log-likelihood gradients, so the score
equals ours, ∇log p(q)ᵀ H⁻¹ ∇log p(z) (positive = helpful). The training loss samples its targets
from the model when kronfluence asks for the true Fisher (``sample=True``), through the same
label sampler as ours; its damping default (``damping_factor=None``) is 0.1 · mean(Λ) per module,
like ours.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from infra_pl.data.chat_encoding import collate_padded
from infra_pl.ekfac.loss import causal_lm_loss


def kronfluence_available() -> bool:
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        return False
    return True


def ekfac_factor_arguments(empirical: bool) -> Any:
    """kronfluence's EK-FAC settings that match ours: float32 factors, float64 eigendecomposition, no AMP.

    One definition for every comparison against kronfluence (this LDS baseline and
    ``benchmarks/bench_vs_kronfluence.py``), so they cannot drift apart.
    """
    from kronfluence.arguments import FactorArguments

    return FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=empirical,
        amp_dtype=None,
        activation_covariance_dtype=torch.float32,
        gradient_covariance_dtype=torch.float32,
        eigendecomposition_dtype=torch.float64,
        lambda_dtype=torch.float32,
        per_sample_gradient_dtype=torch.float32,
    )


def kronfluence_pairwise(
    model: nn.Module,
    module_names: Sequence[str],
    train_features: Sequence[dict[str, Any]],
    query_features: Sequence[dict[str, Any]],
    pad_token_id: int,
    fisher: str = "true",
    batch_size: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """[Q, N] kronfluence EK-FAC pairwise scores (our sign convention), on a copy of ``model``."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    if fisher not in ("true", "empirical"):
        raise ValueError(f"fisher must be 'true' or 'empirical', got {fisher!r}")
    names = list(module_names)

    class SummedNllTask(Task):
        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
            return causal_lm_loss(model, batch, sample_labels=sample).sum()

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            return causal_lm_loss(model, batch, sample_labels=False).sum()

        def get_influence_tracked_modules(self) -> list[str]:
            return names

        def get_attention_mask(self, batch: Any) -> torch.Tensor:
            return batch["attention_mask"]

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_padded(items, pad_token_id)

    task = SummedNllTask()
    wrapped = prepare_model(copy.deepcopy(model).eval(), task)
    loader_kwargs = DataLoaderKwargs(collate_fn=collate)
    with (
        tempfile.TemporaryDirectory(prefix="lds_kronfluence_") as workdir,
        torch.random.fork_rng(devices=[]),
        warnings.catch_warnings(),
    ):
        # kronfluence 1.0.1 builds a disabled CUDA GradScaler through a deprecated alias on every pass
        warnings.filterwarnings("ignore", message=r".*GradScaler", category=FutureWarning)
        torch.manual_seed(seed)
        analyzer = Analyzer(
            "lds", wrapped, task, cpu=True, log_level=logging.WARNING, disable_tqdm=True, output_dir=workdir
        )
        analyzer.fit_all_factors(
            "factors",
            list(train_features),
            per_device_batch_size=batch_size,
            dataloader_kwargs=loader_kwargs,
            factor_args=ekfac_factor_arguments(empirical=fisher == "empirical"),
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            "scores",
            "factors",
            query_dataset=list(query_features),
            train_dataset=list(train_features),
            # every query in one batch: kronfluence makes one pass over the training set per query batch
            per_device_query_batch_size=len(query_features),
            per_device_train_batch_size=batch_size,
            dataloader_kwargs=loader_kwargs,
            score_args=ScoreArguments(
                damping_factor=None,
                amp_dtype=None,
                per_sample_gradient_dtype=torch.float32,
                precondition_dtype=torch.float32,
                score_dtype=torch.float32,
            ),
            overwrite_output_dir=True,
        )
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    return scores.double().cpu().numpy()
