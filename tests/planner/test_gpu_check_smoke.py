"""benchmarks/gpu_check.py runs end to end on CPU with the toy model (the GPU run is the same code)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_gpu_check_smoke_on_cpu(capsys, compute_dtype):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--device", "cpu", "--tiny", "--compute-dtype", compute_dtype]) == 0
    out = capsys.readouterr().out
    for phase in ("covariance pass", "eigendecomposition", "lambda pass", "measurement pass", "instance scores",
                  "token scores (JVP)"):
        assert re.search(rf"\| {re.escape(phase)} \| [0-9.]+ s \| [0-9.]+ \|", out), phase
    agreement = float(re.search(r"max \|Σ_t s_t − S\(z\)\| / max\|S\| = ([0-9.e+-]+)", out).group(1))
    assert agreement < 0.05  # token scores sum to the instance scores (bf16 arithmetic)
