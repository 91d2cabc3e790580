"""The training-gradient index through `attribute` (Lightning): write it in the instance pass, then
score a measurement unknown at that time with from_index: no pass over the training set, and the
same scores as a fresh instance pass (full rank)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from infra_pl.callbacks import EKFACFactors, InfluenceScores
from infra_pl.measurements import TargetLogProb
from infra_pl.scores_store import read_metadata
from infra_pl.trainer import InfraTrainer
from tests.scripts.attribute_factors import build

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "attribute_index.py"


def attribute(tmp_path, tiny_cache, scores: InfluenceScores):
    module, datamodule = build(str(tiny_cache), 17)
    factors = EKFACFactors(fisher="empirical", output_dir=str(tmp_path / "factors"), batch_size=8, log_spectra=False)
    trainer = InfraTrainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[factors, scores])
    trainer.attribute(module, datamodule=datamodule)
    return trainer.attribution_state.scores


def test_attribute_writes_an_index_and_scores_a_new_measurement_from_it(tmp_path, tiny_cache, monkeypatch):
    known = TargetLogProb(name="answer", prompts=["What is 2 + 3?"], targets=["5"])
    new = TargetLogProb(name="new", prompts=["Add 4 and 5.", "Write a function that returns 1."], targets=["9", "return 1"])
    common = dict(batch_size=8, token_top_k=0, sentence_top_k=0, removal_top_k=0, tagger="none")
    index_dir = str(tmp_path / "index")
    attribute(tmp_path, tiny_cache, InfluenceScores(measurements=[known], output_dir=str(tmp_path / "first"),
                                                    index=True, index_rank=64, index_dtype="float32",
                                                    index_dir=index_dir, **common))
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["full_rank"] and manifest["n_train"] == 17

    passes = []
    original = InfraTrainer.run_attribution_pass
    monkeypatch.setattr(InfraTrainer, "run_attribution_pass",
                        lambda self, phase, *a, **k: (passes.append(phase), original(self, phase, *a, **k))[1])
    scored = attribute(tmp_path, tiny_cache, InfluenceScores(measurements=[new], output_dir=str(tmp_path / "second"),
                                                             from_index=True, index_dir=index_dir, **common))
    assert "influence/instance" not in passes and "influence/measure" in passes, passes
    passes.clear()
    fresh = attribute(tmp_path, tiny_cache, InfluenceScores(measurements=[new], output_dir=str(tmp_path / "third"),
                                                            **common))
    assert "influence/instance" in passes
    got = scored.instance_scores.set_index("id").sort_index()["score_new"]
    want = fresh.instance_scores.set_index("id").sort_index()["score_new"]
    assert list(got.index) == list(want.index) and len(got) == 17
    got, want = torch.tensor(got.to_numpy()), torch.tensor(want.to_numpy())
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5
    meta = read_metadata(scored.instance_scores_path)
    assert meta["scored_from"]["rank"] == 64 and meta["scored_from"]["exact"]
    assert pd.read_parquet(scored.instance_scores_path)["id"].nunique() == 17


def test_two_ddp_ranks_write_one_index_that_scores_like_one_process(tmp_path, tiny_cache):
    """17 examples on 2 ranks: each rank writes its own parts of one index; a new measurement scored from
    it in one process equals the one-process index's scores (full rank, float32)."""

    def run(out, devices, mode, index_dir):
        result = subprocess.run([sys.executable, str(SCRIPT), str(tiny_cache), str(out), str(devices), mode,
                                 str(index_dir)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr[-3000:]
        return pd.read_parquet(out / "scores" / "instance_scores.parquet").set_index("id").sort_index()

    scores = {}
    for label, devices in (("single", 1), ("ddp", 2)):
        index_dir = tmp_path / label / "index"
        run(tmp_path / label, devices, "index", index_dir)
        scores[label] = run(tmp_path / f"{label}_from", 1, "from", index_dir)["score_new"]
    shards = {p.name.split("-")[1] for p in (tmp_path / "ddp" / "index").glob("part-*.json")}
    assert shards == {"r0", "r1"}  # each rank wrote its own parts
    assert list(scores["ddp"].index) == list(scores["single"].index) and len(scores["ddp"]) == 17
    got, want = torch.tensor(scores["ddp"].to_numpy()), torch.tensor(scores["single"].to_numpy())
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4  # DDP sums the factors in another order


def test_the_index_check_under_ddp_equals_one_process(tmp_path, tiny_cache):
    """A rank-4 index scored with the exact check: 2 DDP ranks share the check pass and give the same
    scores (exact rows, calibration line, the rest) as one process."""

    def run(out, devices, mode):
        result = subprocess.run([sys.executable, str(SCRIPT), str(tiny_cache), str(out), str(devices), mode,
                                 str(tmp_path / "index4")], capture_output=True, text=True, timeout=300,
                                cwd=str(tmp_path))
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run(tmp_path / "written", 1, "index4")
    frames, metas = {}, {}
    for label, devices in (("single", 1), ("ddp", 2)):
        run(tmp_path / label, devices, "check")
        path = tmp_path / label / "scores" / "instance_scores.parquet"
        frames[label] = pd.read_parquet(path).set_index("id").sort_index()
        metas[label] = read_metadata(path)["scored_from"]
    single, ddp = frames["single"], frames["ddp"]
    assert list(ddp.index) == list(single.index) and len(ddp) == 17
    assert ddp["exact_score"].equals(single["exact_score"]) and 6 <= int(single["exact_score"].sum()) <= 10
    got, want = torch.tensor(ddp["score_new"].to_numpy()), torch.tensor(single["score_new"].to_numpy())
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
    line, line_ddp = metas["single"]["check"]["new"], metas["ddp"]["check"]["new"]
    assert line["examples"] == line_ddp["examples"] == 6 and abs(line["slope"] - line_ddp["slope"]) <= 1e-4 * abs(line["slope"])
