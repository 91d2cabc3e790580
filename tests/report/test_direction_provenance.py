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
    assert "'code': the index scores were not checked against exact scores" in text  # no check recorded: said so


def test_the_index_check_is_reported_with_its_agreement_and_calibration():
    instance = pd.DataFrame({"id": ["a", "b"], "index": [0, 1], "domain": ["math", "code"], "score_code": [1.0, -1.0]})
    check = {"code": {"measurement": "code", "examples": 128, "pearson": 0.931, "spearman": 0.87, "slope": 5.4,
                      "intercept": -0.002}}
    info = {"code": {"target": "generated", "scored_from": {"kind": "eigen", "rank": 64, "dtype": "int8",
                                                             "exact": False, "check": check, "exact_examples": 300}}}
    lines, _, _ = data_provenance(instance, None, info)
    text = "\n".join(lines)
    assert "on 128 sampled training examples scored exactly, the index scores agree with exact scores at Pearson " \
           "0.931 (Spearman 0.870)" in text
    assert "exact ≈ 5.4·index − 0.002" in text and "300 examples" in text and "not checked" not in text
