"""The findings block: verdicts that follow the measured intervals, and length confounds flagged."""

import numpy as np
import pandas as pd

from infra_pl.report import standard_tables, write_report
from infra_pl.report.findings import HOLDS, NOT, NOT_MEASURABLE, build_findings

BEHAVIOURS = ("verification", "exploration", "backtracking", "subgoal_setting", "backward_chaining")


def _instance(n=600, seed=0, in_domain_shift=1.0, length_driven=False):
    rng = np.random.default_rng(seed)
    domain = rng.choice(["math", "code"], n)
    tokens = rng.integers(50, 2000, n)
    frame = pd.DataFrame({"id": [f"e{k}" for k in range(n)], "index": range(n), "domain": domain, "category": "c",
                          "difficulty": rng.integers(1, 6, n), "difficulty_source": "table:levels.jsonl",
                          "n_target_tokens": tokens})
    for name in ("math", "code"):
        frame[f"score_{name}"] = rng.normal(size=n) + in_domain_shift * (domain == name)
    for b in BEHAVIOURS:
        frame[f"behaviour_{b}"] = rng.integers(0, 2, n)
    if length_driven:
        # Exploration appears in long traces, and S grows with length alone: a raw-sum artefact.
        frame["behaviour_exploration"] = (rng.random(n) < 0.05 + 0.9 * tokens / tokens.max()).astype(int)
        for name in ("math", "code"):
            frame[f"score_{name}"] = tokens * (0.01 + 0.002 * rng.normal(size=n))
    return frame


def test_finding1_verdict_follows_the_interval():
    holds = {f.number: f for f in build_findings(standard_tables(_instance(in_domain_shift=1.5), n_boot=300))}
    assert holds[1].verdict in (HOLDS, "partly holds") and "difference" in holds[1].measured[0]
    reversed_ = {f.number: f for f in build_findings(standard_tables(_instance(in_domain_shift=-1.5), n_boot=300))}
    assert reversed_[1].verdict == NOT
    renamed = _instance().rename(columns={"score_math": "score_aime", "score_code": "score_lcb"})
    assert build_findings(standard_tables(renamed, n_boot=100))[0].verdict == NOT_MEASURABLE


def test_a_length_driven_behaviour_difference_is_flagged_in_the_report(tmp_path):
    frame = _instance(length_driven=True)
    tables = standard_tables(frame, n_boot=300)
    row = tables["behaviours"].set_index(["behaviour", "measurement"]).loc[("exploration", "math")]
    assert row["difference_ci_low"] > 0  # raw sums: "exploration helps"
    assert row["difference_length_adjusted_ci_low"] <= 0 <= row["difference_length_adjusted_ci_high"]
    [finding3] = [f for f in build_findings(tables) if f.number == 3]
    assert any("exploration on math" in c and "length-driven" in c for c in finding3.caveats)
    html_path, md_path = write_report(tmp_path, frame, tables=tables, n_boot=300)
    html, md = html_path.read_text(), md_path.read_text()
    assert html.index("Findings on this run") < html.index("Tables") and "possibly length-driven" in html
    assert "Finding 3" in md and "possibly length-driven" in md


def test_length_quintile_difficulty_is_a_caveat_of_finding2():
    frame = _instance()
    frame["difficulty_source"] = "length_quantile"
    [finding2] = [f for f in build_findings(standard_tables(frame, n_boot=200)) if f.number == 2]
    assert any("difficulty = length quintile" in c for c in finding2.caveats)
