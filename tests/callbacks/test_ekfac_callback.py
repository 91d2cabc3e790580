"""EKFACFactors through `attribute`: equals the pure-torch fit, resumes, refuses mismatches, DDP."""

import subprocess
import sys
from pathlib import Path

import pytest

from infra_pl.callbacks import EKFACFactors
from infra_pl.ekfac import Factors, FactorsMismatchError, fit_factors
from infra_pl.trainer import InfraTrainer
from tests.scripts.attribute_factors import build

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "attribute_factors.py"


def make_trainer(root, **callback_kw):
    callback = EKFACFactors(fisher="empirical", batch_size=8, log_spectra=False, **callback_kw)
    trainer = InfraTrainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(root), callbacks=[callback],
    )
    return trainer, callback


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_callback_factors_equal_pure_torch_fit(tmp_path, tiny_cache):
    module, datamodule = build(str(tiny_cache), None)
    trainer, _ = make_trainer(tmp_path)
    trainer.attribute(module, datamodule=datamodule)
    from_callback = trainer.attribution_state["factors"]
    reference = fit_factors(
        module.model, datamodule.attribution_dataloader("train", 8), fisher="empirical", progress=False,
        train_ids=[e["id"] for e in datamodule.train_examples],
    )
    assert set(from_callback.modules) == set(reference.modules) and len(reference.modules) == 6
    for name, ref in reference.modules.items():
        got = from_callback.modules[name]
        assert rel_err(got.activation_covariance, ref.activation_covariance) < 1e-5
        assert rel_err(got.gradient_covariance, ref.gradient_covariance) < 1e-5
        assert rel_err(got.lambdas, ref.lambdas) < 1e-4
    on_disk = Factors.load(tmp_path / "attribution" / "factors")
    assert on_disk.data_fingerprint == reference.data_fingerprint


def test_interrupted_run_resumes_without_recomputing_covariance(tmp_path, tiny_cache, monkeypatch):
    module, datamodule = build(str(tiny_cache), None)
    trainer, callback = make_trainer(tmp_path)
    passes = []
    original = InfraTrainer.run_attribution_pass

    def crash_in_lambda(self, phase, *args, **kwargs):
        passes.append(phase)
        if phase == "ekfac/lambda":
            raise KeyboardInterrupt("simulated interruption")
        return original(self, phase, *args, **kwargs)

    monkeypatch.setattr(InfraTrainer, "run_attribution_pass", crash_in_lambda)
    with pytest.raises(KeyboardInterrupt):
        trainer.attribute(module, datamodule=datamodule)
    assert "ekfac/covariance" in passes
    partial = tmp_path / "attribution" / "factors" / "partial"
    assert (partial / "covariance.json").exists() and (partial / "eigen.json").exists()

    passes.clear()
    monkeypatch.setattr(InfraTrainer, "run_attribution_pass", lambda self, phase, *a, **k: (passes.append(phase), original(self, phase, *a, **k)))
    module2, datamodule2 = build(str(tiny_cache), None)
    trainer2, _ = make_trainer(tmp_path)
    trainer2.attribute(module2, datamodule=datamodule2)
    assert "ekfac/covariance" not in passes and "ekfac/lambda" in passes
    assert not partial.exists(), "phase intermediates are removed once the factors are complete"


def test_factors_from_another_model_are_refused(tmp_path, tiny_cache):
    module, datamodule = build(str(tiny_cache), None)
    trainer, _ = make_trainer(tmp_path)
    trainer.attribute(module, datamodule=datamodule)
    other, datamodule2 = build(str(tiny_cache), None)
    other.hparams.init_seed = 7  # different weights, same architecture
    trainer2, _ = make_trainer(tmp_path)
    with pytest.raises(FactorsMismatchError, match="weight fingerprint differs"):
        trainer2.attribute(other, datamodule=datamodule2)
    trainer3, _ = make_trainer(tmp_path, strict=False)
    with pytest.warns(UserWarning, match="do not match"):
        build_other, dm3 = build(str(tiny_cache), None)
        build_other.hparams.init_seed = 7
        trainer3.attribute(build_other, datamodule=dm3)


def test_ddp_two_ranks_match_one_process(tmp_path, tiny_cache):
    """17 examples in batches of 8 on 2 ranks: rank 0 gets 2 batches, rank 1 gets 1 (uneven)."""
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"ddp{devices}"
        result = subprocess.run(
            [sys.executable, str(SCRIPT), str(tiny_cache), str(out), str(devices), "17"],
            capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = Factors.load(out)
    single, ddp = runs[1], runs[2]
    for name, ref in single.modules.items():
        got = ddp.modules[name]
        assert got.n_sequences == ref.n_sequences == 17
        assert rel_err(got.activation_covariance, ref.activation_covariance) < 1e-4
        assert rel_err(got.gradient_covariance, ref.gradient_covariance) < 1e-4
        assert rel_err(got.lambdas, ref.lambdas) < 1e-4
