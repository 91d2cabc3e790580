"""`attribute` under FSDP (2 CPU processes, gloo) equals one process on the same checkpoint.

Each test fine-tunes the tiny model for 3 steps under Lightning's FSDP strategy, attributes that
checkpoint under FSDP and in one process, and compares factors, instance and token scores (as the
DDP test does), the weight fingerprints, and that the weights attributed are the checkpoint's.
FSDP on CPU needs a one-line strategy subclass (tests/scripts/attribute_fsdp.py says why).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra_pl.ekfac import Factors

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "attribute_fsdp.py"

pytestmark = pytest.mark.slow


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _script(tmp_path, *args: str) -> str:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def _attribute(tmp_path, cache, out, devices: int, strategy: str, ckpt, reference=None, again=False) -> dict:
    _script(tmp_path, "attribute", str(cache), str(out), str(devices), strategy, str(ckpt),
            *([str(reference)] if reference else []), *(["again"] if again else []))
    return json.loads((Path(out) / "run.json").read_text())


def _compare(fsdp_out: Path, single_out: Path) -> None:
    import pandas as pd

    fsdp, single = Factors.load(fsdp_out), Factors.load(single_out)
    assert fsdp.model_fingerprint == single.model_fingerprint  # rank-independent, equal to one process's
    assert fsdp.module_fingerprints == single.module_fingerprints and len(single.modules) == 6
    for name, ref in single.modules.items():
        got = fsdp.modules[name]
        assert got.n_sequences == ref.n_sequences == 17
        assert rel_err(got.activation_covariance, ref.activation_covariance) < 1e-4, name
        assert rel_err(got.gradient_covariance, ref.gradient_covariance) < 1e-4, name
        assert rel_err(got.lambdas, ref.lambdas) < 1e-4, name
    tables = {}
    for label, out in (("fsdp", fsdp_out), ("single", single_out)):
        instance = pd.read_parquet(out / "scores" / "instance_scores.parquet").set_index("id").sort_index()
        tokens = pd.read_parquet(out / "scores" / "token_scores.parquet").sort_values(["id", "position"])
        tables[label] = (instance, tokens.reset_index(drop=True))
    (instance, tokens), (ref_instance, ref_tokens) = tables["fsdp"], tables["single"]
    assert len(ref_instance) == 17 and list(instance.index) == list(ref_instance.index)
    got, want = torch.tensor(instance["score_answer"].to_numpy()), torch.tensor(ref_instance["score_answer"].to_numpy())
    assert rel_err(got, want) < 1e-4
    assert list(tokens["id"]) == list(ref_tokens["id"]) and list(tokens["position"]) == list(ref_tokens["position"])
    assert rel_err(torch.tensor(tokens["score"].to_numpy()), torch.tensor(ref_tokens["score"].to_numpy())) < 1e-4


def test_fsdp_fit_then_attribute_matches_one_process(tmp_path, tiny_cache):
    """Lightning's default FSDP wrapping (one unit), a full checkpoint file; one process then reuses the FSDP factors."""
    fit = tmp_path / "fit"
    _script(tmp_path, "fit", str(tiny_cache), str(fit), "2", "fsdp", "full")
    ckpt = fit / "fitted.ckpt"
    fsdp = _attribute(tmp_path, tiny_cache, tmp_path / "fsdp", 2, "fsdp", ckpt, again=True)
    single = _attribute(tmp_path, tiny_cache, tmp_path / "single", 1, "single", ckpt)
    assert fsdp["max_difference_to_checkpoint"] == 0.0 and fsdp["checkpoint_tensors"] > 0  # the fitted weights
    # attribute again on the same FSDP trainer (model wrapped and sharded by then): the factors are reused, same scores
    assert fsdp["again_reused"] and fsdp["again_max_score_difference"] == 0.0
    assert fsdp["weights_fingerprint"] == single["weights_fingerprint"]
    assert fsdp["sharded_after"] and not single["sharded_after"]  # attribute hands the FSDP model back sharded
    assert not fsdp["reused"] and not single["reused"]
    _compare(tmp_path / "fsdp", tmp_path / "single")
    # Factors fitted under FSDP carry one process's fingerprints: a one-process run of the checkpoint reuses them.
    again = _attribute(tmp_path, tiny_cache, tmp_path / "fsdp", 1, "single", ckpt)
    assert again["reused"]


def test_fsdp_layer_units_and_sharded_checkpoint(tmp_path, tiny_cache):
    """An FSDP unit and activation checkpointing per decoder layer (wrapper names in the module tree) and a
    sharded checkpoint folder; an FSDP rerun reuses its factors (fingerprints checked on gathered weights)."""
    fit = tmp_path / "fit"
    _script(tmp_path, "fit", str(tiny_cache), str(fit), "2", "fsdp-wrap", "sharded")
    folder, consolidated = fit / "fitted.ckpt", fit / "consolidated.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2
    _script(tmp_path, "consolidate", str(folder), str(consolidated))
    fsdp = _attribute(tmp_path, tiny_cache, tmp_path / "fsdp", 2, "fsdp-wrap", folder, reference=consolidated)
    single = _attribute(tmp_path, tiny_cache, tmp_path / "single", 1, "single", consolidated)
    assert fsdp["max_difference_to_checkpoint"] == 0.0
    assert fsdp["weights_fingerprint"] == single["weights_fingerprint"]
    assert sorted(Factors.load(tmp_path / "fsdp").modules) == sorted(Factors.load(tmp_path / "single").modules)
    _compare(tmp_path / "fsdp", tmp_path / "single")
    again = _attribute(tmp_path, tiny_cache, tmp_path / "fsdp", 2, "fsdp-wrap", folder, reference=consolidated)
    assert again["reused"]


def test_fingerprints_refuse_shards_and_equal_one_process_when_gathered(tmp_path):
    """torch FSDP alone (2 processes): fingerprints of the shards are refused; gathered, every rank's equal the
    unsharded model's, with one unit or one per layer, and the module names are the unwrapped ones."""
    _script(tmp_path, "fingerprints", str(tmp_path))
    ranks = [json.loads((tmp_path / f"fingerprints-r{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        reference = result["reference"]
        assert len(reference["tracked"]) == 6
        for label in ("root", "layers"):
            entry = result[label]
            assert len(entry["refused"]) == 2 and all("FSDP shard" in message for message in entry["refused"])
            assert entry["gathered"] == reference, label
            assert entry["names_unwrapped"] and entry["wrapped_again"], label


def test_gpu_check_fsdp_path_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_check.py --fsdp (the lent-GPU check) end to end on 2 CPU ranks: a row per phase, and the
    FSDP attribution equals the one without FSDP (DDP here) on the same checkpoint."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--fsdp", "--device", "cpu", "--tiny", "--devices", "2", "--state-dict", "full",
         "--compare", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    for phase in ("covariance pass", "eigendecomposition", "lambda pass", "measurement pass", "directions (H^-1 grad f)",
                  "instance scores", "token scores (JVP)"):
        assert f"| {phase} |" in out, phase
    assert "on 2 rank(s)" in out and "FSDP vs without FSDP (DDP, 2 ranks), fingerprints equal: yes" in out
    assert sum("max relative difference" in line for line in out.splitlines()) == 2
    for line in out.splitlines():
        if line.startswith("FSDP vs without FSDP (DDP, 2 ranks)") and "max relative difference" in line:
            assert float(line.rsplit(" ", 1)[1]) < 1e-4, line
