"""benchmarks/compare_mixes.py, the whole loop on a tiny demo: a scoring run (fit, validate,
attribute), the influence-curated mix built from its scores, and a 2-variant x 2-seed comparison
whose table pairs the curated runs with the baseline on the same seeds (the CI version of issue 25)."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_mixes.py"


@pytest.mark.slow
def test_tiny_benchmark_scores_curates_and_compares(tmp_path, tiny_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("compare_mixes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench"
    args = ["--tiny", "--in-process", "--out", str(out), "--seeds", "0", "1", "--variants", "baseline", "curated",
            "--steps", "6", "--score-seed", "7", "--cache-dir", str(tiny_cache)]
    module.main(args)

    scores = out / "runs" / "scoring" / "seed7" / "attribution" / "scores" / "instance_scores.parquet"
    frame = pd.read_parquet(scores)
    assert len(frame) == module.TINY_DEMO["n_train"] and {"score_math", "score_code"} <= set(frame.columns)
    rule = json.loads((out / "runs" / "curated" / "seed0" / "curation" / "curation.json").read_text())
    assert rule["size_after"] == module.TINY_DEMO["n_train"] // 2 and rule["scores_file"] == str(scores)
    # The curated mix is the same at every training seed; the training seed is what changes.
    ids = [(out / "runs" / "curated" / f"seed{s}" / "curation" / "selected_ids.jsonl").read_text() for s in (0, 1)]
    assert ids[0] == ids[1]
    table = json.loads((out / "summary" / "table.json").read_text())
    curated = next(r for r in table["rows"] if r["variant"] == "curated" and r["domain"] == "math" and r["level"] == "all")
    assert curated["paired_seeds"] == [0, 1] and table["meta"]["complete"] and table["meta"]["optimizer_steps"] == [6]
    assert (out / "summary" / "compare.png").exists() and (out / "command.txt").exists()
