"""Table 2 aggregate: joint removal per behaviour, with CI, beside the additive approximation."""

import numpy as np
import pandas as pd
import pytest

from infra_pl.report.removal import behaviour_removal_summary
from infra_pl.report.validate import ReportInputError


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for k in range(40):
        full = 10 + rng.normal()
        joint = 2.0 + 0.1 * rng.normal()  # exploration's sentences carry +2 on average
        rows.append({"id": f"e{k}", "measurement": "math", "removed": "exploration", "n_sentences": 2,
                     "score_full": full, "score_without": full - joint, "score_removal_joint": joint,
                     "score_removal_additive": joint + 0.5})
        neutral = 0.1 if k % 2 else -0.1  # mean exactly 0
        rows.append({"id": f"e{k}", "measurement": "math", "removed": "verification", "n_sentences": 1,
                     "score_full": full, "score_without": full - neutral, "score_removal_joint": neutral,
                     "score_removal_additive": neutral})
    return pd.DataFrame(rows)


def test_joint_removal_summary_separates_a_helpful_behaviour_from_a_neutral_one():
    table = behaviour_removal_summary(_rows(), n_boot=500).set_index("removed")
    exploration, verification = table.loc["exploration"], table.loc["verification"]
    assert exploration["n_examples"] == 40 and exploration["mean_removal_ci_low"] > 1.5
    assert exploration["additive_minus_joint"] == pytest.approx(0.5)
    assert verification["mean_removal_ci_low"] < 0 < verification["mean_removal_ci_high"]
    assert exploration["mean_score_full"] - exploration["mean_score_without"] == pytest.approx(exploration["mean_removal"])


def test_missing_columns_are_named():
    with pytest.raises(ReportInputError, match="score_removal_joint"):
        behaviour_removal_summary(_rows().drop(columns=["score_removal_joint"]))
