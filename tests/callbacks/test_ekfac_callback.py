"""EKFACFactors through `attribute`: equals the pure-torch fit, resumes, refuses mismatches, DDP."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra_pl.callbacks import EKFACFactors
from infra_pl.ekfac import Factors, FactorsMismatchError, fit_factors
from infra_pl.trainer import InfraTrainer
from tests.conftest import TINY_MODEL
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
    from_callback = trainer.attribution_state.factors.factors
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


def _run_script(tiny_cache, out, devices: int, partitions: int, tmp_path, refine: int = 0) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_cache), str(out), str(devices), "17", str(partitions), "1", str(refine)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_two_ranks_and_two_partitions_match_one_process(tmp_path, tiny_cache):
    """17 examples in batches of 8 on 2 ranks: rank 0 gets 2 batches, rank 1 gets 1 (uneven).

    The same factors, instance scores and token scores come out of one process, of 2-rank DDP
    (each rank writing its own score shards) and of a 2-partition run (modules in two groups).
    """
    import pandas as pd
    import torch

    runs = {}
    for label, devices, partitions in (("single", 1, 1), ("ddp", 2, 1), ("partitions", 1, 2)):
        out = tmp_path / label
        _run_script(tiny_cache, out, devices, partitions, tmp_path)
        instance = pd.read_parquet(out / "scores" / "instance_scores.parquet").set_index("id").sort_index()
        tokens = pd.read_parquet(out / "scores" / "token_scores.parquet").sort_values(["id", "position"]).reset_index(drop=True)
        runs[label] = (Factors.load(out), instance, tokens, out)
    single, ref_instance, ref_tokens, _ = runs["single"]
    assert len(ref_instance) == 17 and ref_tokens["id"].nunique() == 6  # top 3 per training domain
    for label in ("ddp", "partitions"):
        factors, instance, tokens, out = runs[label]
        for name, ref in single.modules.items():
            got = factors.modules[name]
            assert got.n_sequences == ref.n_sequences == 17
            assert rel_err(got.activation_covariance, ref.activation_covariance) < 1e-4, label
            assert rel_err(got.gradient_covariance, ref.gradient_covariance) < 1e-4, label
            assert rel_err(got.lambdas, ref.lambdas) < 1e-4, label
        assert list(instance.index) == list(ref_instance.index)
        got, want = torch.tensor(instance["score_answer"].to_numpy()), torch.tensor(ref_instance["score_answer"].to_numpy())
        tolerance = 1e-5 if label == "partitions" else 1e-4  # DDP sums covariances in another order
        assert rel_err(got, want) < tolerance, label
        assert list(tokens["id"]) == list(ref_tokens["id"]) and list(tokens["position"]) == list(ref_tokens["position"])
        assert rel_err(torch.tensor(tokens["score"].to_numpy()), torch.tensor(ref_tokens["score"].to_numpy())) < tolerance, label
    ddp_out = runs["ddp"][3]
    shards = {p.name.split("-")[1] for p in (ddp_out / "scores" / "instance_parts").glob("part-*.parquet")}
    assert shards == {"r0", "r1"}  # each rank wrote its own shard
    from infra_pl.scores_store import read_shards

    table = read_shards(ddp_out / "scores" / "instance_parts").to_pandas()
    assert sorted(table["id"]) == sorted(ref_instance.index)  # the shards read as one table, each example once
    part_out = runs["partitions"][3]
    assert (part_out / "partitions.json").exists() and (part_out / "partition-001" / "manifest.json").exists()


def test_refined_directions_are_the_same_under_ddp_and_partitions(tmp_path, tiny_cache):
    """CG refinement (2 iterations, one system per module) gives the same scores on 2 DDP ranks
    (each rank its shard of every Fisher-vector product, summed) and with 2 module partitions."""
    import json

    import pandas as pd
    import torch

    scores = {}
    for label, devices, partitions in (("single", 1, 1), ("ddp", 2, 1), ("partitions", 1, 2)):
        out = tmp_path / label
        _run_script(tiny_cache, out, devices, partitions, tmp_path, refine=2)
        info = json.loads((out / "scores" / "measurement_info.json").read_text())["answer"]["refinement"]
        assert info["iterations"] == 2 and info["examples"] == 17 and info["residuals"][2] < info["residuals"][0]
        scores[label] = pd.read_parquet(out / "scores" / "instance_scores.parquet").set_index("id").sort_index()
    want = torch.tensor(scores["single"]["score_answer"].to_numpy())
    for label in ("ddp", "partitions"):
        assert rel_err(torch.tensor(scores[label]["score_answer"].to_numpy()), want) < 1e-4, label


def test_auto_partitions_follow_the_memory_planner():
    """partitions: auto asks the planner: a budget just under the all-modules peak splits the modules."""
    from types import SimpleNamespace

    import transformers

    from infra_pl.ekfac import find_tracked_modules
    from infra_pl.ekfac.driver import FactorFit
    from infra_pl.ekfac.options import FactorOptions
    from infra_pl.planner import Settings, estimate
    from infra_pl.runner import InProcessRunner

    config = {k: v for k, v in TINY_MODEL.items() if k != "model_type"}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=300, **config))
    tracked = find_tracked_modules(model)
    from callbacks.ekfac_factors import batch_shape

    shape = batch_shape(FactorOptions(), SimpleNamespace(eval_batch_size=4, max_length=64))

    def groups_for(**options):
        fit = FactorFit(FactorOptions(**options), InProcessRunner("cpu"), model, None, list, None, tracked=tracked,
                        batch_shape=shape)
        return fit.module_groups()

    settings = Settings(batch_size=4, seq_len=64, fisher="true", padding=True)
    peaks = estimate(model, settings, modules=list(tracked)).peaks()
    everything = max(peaks.values())
    assert groups_for(partitions="auto", device_budget=str(2 * everything)) == [list(tracked)]
    groups = groups_for(partitions="auto", device_budget=str(everything - 1))
    assert len(groups) >= 2 and [n for g in groups for n in g] == list(tracked)
    with pytest.raises(ValueError, match="device_budget"):
        groups_for(partitions="auto")


def test_token_budget_batches_give_the_same_factors(tmp_path, tiny_cache):
    """Covariance and Lambda are sums over tokens and sequences: regrouping batches changes nothing."""
    module, datamodule = build(str(tiny_cache), None)
    datamodule.attribution_max_tokens = 640  # up to 8 short sequences, 2 of the longest (max_length 320)
    trainer, _ = make_trainer(tmp_path)
    trainer.attribute(module, datamodule=datamodule)
    batched = trainer.attribution_state.factors.factors
    sizes = [len(b["index"]) for b in datamodule.attribution_dataloader("train", 8)]
    assert min(sizes) < 8 and max(sizes) == 8  # the budget really regrouped the batches
    datamodule.attribution_max_tokens = None
    reference = fit_factors(module.model, datamodule.attribution_dataloader("train", 8), fisher="empirical", progress=False)
    for name, ref in reference.modules.items():
        got = batched.modules[name]
        assert rel_err(got.activation_covariance, ref.activation_covariance) < 1e-5
        assert rel_err(got.gradient_covariance, ref.gradient_covariance) < 1e-5
        assert rel_err(got.lambdas, ref.lambdas) < 1e-4


def test_streams_give_the_same_factors(tmp_path, tiny_cache):
    """Two CPU streams split every batch in two parts: the sums, and so the factors, are unchanged."""
    module, datamodule = build(str(tiny_cache), None)
    trainer, _ = make_trainer(tmp_path, streams=2)
    trainer.attribute(module, datamodule=datamodule)
    streamed = trainer.attribution_state.factors.factors
    assert not any(type(c).__name__ == "_PassHooks" for c in trainer.callbacks)  # every pass unhooked itself
    reference = fit_factors(module.model, datamodule.attribution_dataloader("train", 8), fisher="empirical", progress=False)
    for name, ref in reference.modules.items():
        got = streamed.modules[name]
        assert got.n_sequences == ref.n_sequences and got.n_tokens == ref.n_tokens
        assert rel_err(got.activation_covariance, ref.activation_covariance) < 1e-5
        assert rel_err(got.gradient_covariance, ref.gradient_covariance) < 1e-5
        assert rel_err(got.lambdas, ref.lambdas) < 1e-4


def test_bad_streams_are_refused_at_construction():
    with pytest.raises(ValueError, match="streams must be a positive integer"):
        EKFACFactors(streams=0)


def test_bfloat16_products_give_the_pure_torch_bfloat16_fit(tmp_path, tiny_cache):
    """``compute_dtype: bfloat16`` reaches both passes: the callback equals ``fit_factors`` with it,
    and both differ (slightly) from the float32 fit."""
    module, datamodule = build(str(tiny_cache), None)
    trainer, _ = make_trainer(tmp_path, compute_dtype="bfloat16")
    trainer.attribute(module, datamodule=datamodule)
    got_all = trainer.attribution_state.factors.factors
    loader = datamodule.attribution_dataloader("train", 8)
    reference = fit_factors(module.model, loader, fisher="empirical", progress=False, compute_dtype="bfloat16")
    float32 = fit_factors(module.model, loader, fisher="empirical", progress=False)
    for name, ref in reference.modules.items():
        got = got_all.modules[name]
        assert got.lambdas.dtype == torch.float32
        assert rel_err(got.gradient_covariance, ref.gradient_covariance) < 1e-5
        assert rel_err(got.lambdas, ref.lambdas) < 1e-4
        assert 0 < rel_err(got.lambdas, float32.modules[name].lambdas) < 3e-2
    assert got_all.compute_dtype == "bfloat16"
    assert Factors.load(tmp_path / "attribution" / "factors").compute_dtype == "bfloat16"  # in the manifest
    # bfloat16 factors on disk do not pass for float32 ones; the other way round they are reused
    trainer, _ = make_trainer(tmp_path)
    with pytest.raises(FactorsMismatchError, match="fitted with bfloat16 products"):
        trainer.attribute(module, datamodule=datamodule)
    trainer, _ = make_trainer(tmp_path, compute_dtype="float32", refit=True)
    trainer.attribute(module, datamodule=datamodule)
    trainer, _ = make_trainer(tmp_path, compute_dtype="bfloat16")
    trainer.attribute(module, datamodule=datamodule)
    assert trainer.attribution_state.factors.factors.compute_dtype == "float32"


def test_bad_compute_dtype_is_refused_at_construction():
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        EKFACFactors(compute_dtype="float16")


def test_the_default_factor_sample_through_attribute_is_stratified_by_domain(tmp_path, tiny_cache, monkeypatch):
    """``auto`` beyond its count (lowered here to 10) fits both passes on a seeded, domain-stratified sample,
    records it, and equals the pure-torch fit on the same sample."""
    from infra_pl.ekfac import options as factor_options
    from infra_pl.sampling import stratified_sample

    monkeypatch.setattr(factor_options, "AUTO_SAMPLE", 10)
    module, datamodule = build(str(tiny_cache), None)
    trainer, _ = make_trainer(tmp_path)
    trainer.attribute(module, datamodule=datamodule)
    factors = trainer.attribution_state.factors.factors
    assert factors.sample == {"covariance_max_examples": 10, "lambda_max_examples": 10, "seed": 0}
    assert all(m.n_sequences == 10 for m in factors.modules.values())
    domains = [row.get("domain") for row in datamodule.attribution_metadata("train")]
    assert len(set(domains)) == 2 and len(domains) > 10
    chosen = stratified_sample([(row.get("domain"), row.get("difficulty"))
                                for row in datamodule.attribution_metadata("train")], 10, 0)
    assert {domains[i] for i in chosen} == set(domains)  # both domains in the sample
    from infra_pl.ekfac.fit import rows_of

    reference = fit_factors(module.model, list(rows_of(datamodule.attribution_dataloader("train", 8), chosen)),
                            fisher="empirical", progress=False, covariance_max_examples=None, lambda_max_examples=None)
    name = next(iter(reference.modules))
    assert rel_err(factors.modules[name].activation_covariance, reference.modules[name].activation_covariance) <= 1e-5
