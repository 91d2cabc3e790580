"""run_lds on a tiny demo setting: M=3 retrains, a handful of steps, removal check; then it resumes."""

from __future__ import annotations

import json
import math

import pytest

from infra_pl.lds import LDSOptions, LDSSetting, TrainRecipe, run_lds
from infra_pl.lds.report import results_markdown
from tests.lds.lds_helpers import TINY_MODEL

SETTING = LDSSetting(
    n_train=30,
    n_eval=3,
    n_pretrain=10,
    model_config=TINY_MODEL,
    tokenizer_vocab_size=300,
    max_length=512,  # the tiny tokenizer's sequences are longer than the demo's
    pretrain=TrainRecipe(steps=2, learning_rate=5e-3, batch_size=8),
    finetune=TrainRecipe(steps=3, learning_rate=5e-3, batch_size=8),
    max_new_tokens=4,
)
OPTIONS = LDSOptions(
    n_subsets=3, methods=("ekfac", "kfac", "identity", "bm25", "domain"), topk=(2,), topk_seeds=(0, 1),
    topk_controls=("random", "domain-random"), noise_subsets=2, n_bootstrap=100, sandbox_workers=1,
)


@pytest.mark.slow
def test_run_lds_tiny_end_to_end_and_resume(tmp_path):
    lines: list[str] = []
    results = run_lds(SETTING, OPTIONS, tmp_path, log=lines.append)
    root = tmp_path / SETTING.digest()
    # 1 full + 3 LDS + 2 noise + (full seed 1) + top-2 x 2 measurements x 2 seeds + 2 random + 2 x 2 domain-random
    assert len(list((root / "retrains").glob("*.json"))) == 1 + 3 + 2 + 1 + 4 + 2 + 4
    assert sum("retrain " in line for line in lines) == 3 + 2 + 1 + 4 + 2 + 4
    assert set(results["lds"]) == {"ekfac", "kfac", "identity", "bm25", "domain"}
    for row in results["lds"].values():
        assert -1.0 <= row["lds"]["value"] <= 1.0 and set(row["per_measurement"]) == {"code", "math"}
        assert -1.0 <= row["item_lds"]["value"] <= 1.0
    # a 4-token greedy answer is never correct: the labelled fallback is used, and said so
    assert all(info["fallback"] == "reference" and info["n_used"] == 3 for info in results["measurements"].values())
    markdown = results_markdown(results)
    assert "FALLBACK" in markdown and "| `ekfac`" in markdown and "| math | 2 |" in markdown
    assert len(results["removal"]) == 2
    for row in results["removal"]:
        assert len(row["top_drops"]) == len(row["random_drops"]) == len(row["domain_random_drops"]) == 2
        assert row["difference_random"]["value"] == pytest.approx(row["top_drop"]["value"] - row["random_drop"]["value"])
    assert "same domain" in markdown
    assert not math.isnan(results["noise_ceiling"]["mean"])
    assert json.loads((root / "results.json").read_text())["digest"] == SETTING.digest()

    again: list[str] = []
    resumed = run_lds(SETTING, OPTIONS, tmp_path, log=again.append)
    assert not any("retrain " in line or "scores of" in line for line in again)  # nothing recomputed
    assert resumed["lds"] == results["lds"] and resumed["removal"] == results["removal"]
