import json

import pytest

from infra_pl.eval.dcorrect import TooFewCorrectError, read_correctness, select_measurement_sets

EVAL = [{"id": f"m{i}", "domain": "math"} for i in range(30)] + [{"id": f"c{i}", "domain": "code"} for i in range(30)]


def rows(correct_math, correct_code):
    return [{"id": f"m{i}", "domain": "math", "correct": i < correct_math} for i in range(30)] + [
        {"id": f"c{i}", "domain": "code", "correct": i < correct_code} for i in range(30)
    ]


def test_draws_n_correct_per_domain_seeded():
    sets = select_measurement_sets(EVAL, rows(25, 12), n=20, min_correct=10, seed=3)
    assert sets["math"].n_available == 25 and sets["math"].n_used == 20
    assert sets["code"].n_used == 12  # all, since fewer than n
    assert all(EVAL[i]["id"] in {f"m{k}" for k in range(25)} for i in sets["math"].indices)
    again = select_measurement_sets(EVAL, rows(25, 12), n=20, min_correct=10, seed=3)
    other = select_measurement_sets(EVAL, rows(25, 12), n=20, min_correct=10, seed=4)
    assert again["math"].ids == sets["math"].ids and other["math"].ids != sets["math"].ids


def test_too_few_correct_stops_unless_reference_fallback():
    with pytest.raises(TooFewCorrectError, match="code: 3 correct of 30"):
        select_measurement_sets(EVAL, rows(25, 3), min_correct=10)
    sets = select_measurement_sets(EVAL, rows(25, 3), min_correct=10, fallback="reference")
    assert sets["code"].fallback == "reference" and sets["code"].n_used == 30 and sets["code"].n_available == 3
    assert sets["math"].fallback is None


def test_read_correctness_names_bad_rows(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "a", "domain": "math", "correct": True}) + "\n" + json.dumps({"id": "b"}) + "\n")
    with pytest.raises(ValueError, match="row 2: field 'domain' is missing"):
        read_correctness(path)
