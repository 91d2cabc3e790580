"""benchmarks/bench_vs_kronfluence.py runs end to end on a tiny model: both children, interleaved.

It checks the plumbing the real run relies on (the parent/child phase protocol, paired ratios,
per-phase memory rows, the score comparison), not any timing: timings are only meaningful in the
fixed setting, printed by the script itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vs_kronfluence.py"


def test_interleaved_benchmark_runs_and_scores_agree() -> None:
    pytest.importorskip("kronfluence")
    cmd = [sys.executable, str(SCRIPT), "--scale", "--hidden", "64", "--layers", "1", "--heads", "2", "--vocab", "256",
           "--seq-len", "32", "--n-train", "16", "--n-query", "4", "--repeats", "2", "--threads", "1",
           "--batch-size", "8"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # --compute-dtype auto records how it decided (the CPU's bfloat16 units, read from its flags).
    assert re.search(r"compute_dtype=(float32|bfloat16) \(auto; cpu", out), out[-2000:]
    # Every shared phase ran in both libraries in each of the 2 repeats, in alternating order.
    for phase in ("epoch", "factors", "pairwise", "token scores"):
        assert len(re.findall(rf"^repeat \d/2 {phase} +kronfluence", out, flags=re.M)) == 2, phase
    paired = re.search(r"factors\+pairwise: ([0-9.]+) ([0-9.]+)  \(median", out)
    assert paired and all(float(x) > 0 for x in paired.groups())
    for row in ("library phases", "  epoch", "  factors", "  pairwise", "  token scores", "  instance pass"):
        assert re.search(rf"^{row} +\| +[0-9-]+ \| +[0-9]+$", out, flags=re.M), row
    pearson = float(re.search(r"^Pearson ([0-9.]+)", out, flags=re.M).group(1))
    assert pearson >= 0.999


def test_whole_attribution_mode_runs_and_sums_its_phases() -> None:
    """--whole: both children, one N, the factor sample, the index and the new measurement's agreement."""
    pytest.importorskip("kronfluence")
    cmd = [sys.executable, str(SCRIPT), "--scale", "--hidden", "64", "--layers", "1", "--heads", "2", "--vocab", "256",
           "--seq-len", "32", "--n-query", "4", "--threads", "1", "--batch-size", "8", "--clock", "cpu",
           "--whole", "24", "--top-k", "4", "--covariance-max-examples", "12", "--lambda-max-examples", "12"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    row = re.search(r"^\| 24 \|(.+)$", out, flags=re.M)
    assert row, out[-3000:]
    cells = [c.strip() for c in row.group(1).split("|")]
    factors, direction, instance, tokens, total = (float(c) for c in cells[1:6])
    assert abs(factors + direction + instance + tokens - total) <= 2e-3 and float(cells[6]) > 0  # kronfluence ran
    assert "vs full-data factors" in out and "from the index vs its exact instance scores: Pearson" in out
