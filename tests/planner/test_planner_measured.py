"""The planner against a measured peak: one phase of a tiny Llama in a fresh process (CPU RSS)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "planner_check.py"
SPEC = {
    "model": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 8000},
    "dtype": "float32", "batch_size": 2, "seq_len": 256, "measurements": 1, "padding": False,
}


def _clear_refs_writable() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _clear_refs_writable(), reason="/proc/self/clear_refs is not writable: cannot reset the RSS peak")
def test_lambda_pass_estimate_within_25_percent_of_measured():
    spec = importlib.util.spec_from_file_location("planner_check", CHECK)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from infra_pl.planner.estimate import LAMBDA

    measured = check.measure(SPEC, LAMBDA)["measured_mb"]
    estimated = check.estimate_mb(SPEC)[LAMBDA]
    assert measured > 20  # the phase really allocated (logits chain ≈ 47 MiB): the comparison means something
    assert abs(estimated / measured - 1) <= 0.25, (estimated, measured)
