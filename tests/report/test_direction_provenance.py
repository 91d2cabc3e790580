"""The report says when directions were refined by CG or scores came from the training index."""

import pandas as pd

from infra_pl.report.content import data_provenance


def test_refinement_and_index_are_named_per_measurement():
    instance = pd.DataFrame({"id": ["a", "b"], "index": [0, 1], "domain": ["math", "code"], "score_math": [1.0, -1.0]})
    info = {
        "math": {"target": "generated", "refinement": {"iterations": 3, "stop_reason": "iterations", "fisher": "true",
                                                        "examples": 512, "residuals": [0.5, 0.2, 0.1, 0.05]}},
        "code": {"target": "generated", "scored_from": {"kind": "eigen", "rank": 32, "dtype": "float16", "exact": False}},
    }
    lines, _, _ = data_provenance(instance, None, info)
    text = "\n".join(lines)
    assert "'math': v = H⁻¹∇f refined from EK-FAC by 3 CG iteration(s) on the damped true Fisher over 512" in text
    assert "relative residual 0.5 → 0.05" in text
    assert "'code': scores read from the training-gradient index (eigen, rank 32, float16, approximate)" in text
    plain, _, _ = data_provenance(instance, None, {"math": {"target": "generated"}})
    assert "refined" not in "\n".join(plain) and "index" not in "\n".join(plain)
