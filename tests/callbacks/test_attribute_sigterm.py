"""SIGTERM stops `attribute` at a batch boundary with a non-zero status; the rerun resumes and gives
the same scores as an uninterrupted run (issue 18: it used to print `Received SIGTERM` and run on).
SIGKILL keeps resuming bit-identically too (SIGINT: tests/callbacks/test_ekfac_callback.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "attribute_scores_slow.py"


def run(cache, out, seconds: str = "0") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(cache), str(out), seconds], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_cache):
    """Instance scores of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    clean = run(tiny_cache, out)
    assert clean.returncode == 0, clean.stderr[-3000:]
    return pd.read_parquet(out / "scores" / "instance_scores.parquet")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_mid_pass_stops_the_run_and_the_rerun_resumes_identically(tmp_path, tiny_cache, reference, signum):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tiny_cache), str(out), "0.4"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    parts_dir = out / "scores" / "instance_parts"
    deadline = time.monotonic() + 240
    while not list(parts_dir.rglob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its first instance part: " + proc.stderr.read()[-3000:]
    proc.send_signal(signum)
    started = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err[-3000:]
    assert time.monotonic() - started < 30  # at the next batch boundary, not at the end of the run
    if signum == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "stopped by SIGTERM during the pass 'influence/instance'" in err
    parts = list(parts_dir.rglob("part-*.parquet"))
    assert 1 <= len(parts) < 8  # 60 examples in batches of 8: the pass was cut, what it wrote is kept
    assert not (out / "scores" / "instance_scores.parquet").exists()

    resumed = run(tiny_cache, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "reusing factors" in resumed.stderr and "already scored" in resumed.stderr
    got = pd.read_parquet(out / "scores" / "instance_scores.parquet")
    assert len(got) == 60
    pd.testing.assert_frame_equal(got, reference, check_exact=True)
