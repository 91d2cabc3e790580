"""The refactor equality check passes on equal runs and fails on a changed tensor or score."""

import sys
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import check_attribution_equality as check  # noqa: E402


def make_run(root: Path, score: float = 1.0, lam: float = 2.0) -> Path:
    (root / "factors").mkdir(parents=True)
    (root / "scores").mkdir()
    save_file({"m.lambda": torch.tensor([lam, 3.0])}, str(root / "factors" / "lambda.safetensors"))
    (root / "factors" / "manifest.json").write_text('{"fisher": "true", "created": "now"}')
    pd.DataFrame({"id": ["a", "b"], "score_f": [score, 0.5]}).to_parquet(root / "scores" / "instance_scores.parquet")
    return root


def test_equal_runs_pass_and_changed_numbers_fail(tmp_path, capsys):
    base = make_run(tmp_path / "base")
    assert check.main([str(base), str(make_run(tmp_path / "same"))]) == 0
    assert check.main([str(base), str(make_run(tmp_path / "score", score=1.0 + 1e-6))]) == 1
    assert "FAIL  instance_scores" in capsys.readouterr().out
    assert check.main([str(base), str(make_run(tmp_path / "lam", lam=2.5))]) == 1
    assert check.main([str(base), str(make_run(tmp_path / "close", score=1.0 + 1e-9)), "--rtol", "1e-6"]) == 0
