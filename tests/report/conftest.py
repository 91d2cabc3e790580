"""Small hand-made score tables whose statistics can be computed by hand (see the test modules).

The builders are plain functions so a module-scoped fixture can build the same tables once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

BEHAVIOURS = ("verification", "exploration", "backtracking", "subgoal_setting", "backward_chaining")


def make_instance_df() -> pd.DataFrame:
    """Seven examples, two domains. Hand-computed facts used by the tests:

    math rows a-d: score_math [1, 2, -3, 4], score_code [0, -1, -1, 2]
    code rows e-g: score_math [-2, 5, 3],    score_code [1, 1, 4]
    verification in a, c, f; exploration in b, e; no other behaviour anywhere.
    """
    df = pd.DataFrame({
        "id": list("abcdefg"),
        "index": range(7),
        "domain": ["math"] * 4 + ["code"] * 3,
        "source": ["metamath"] * 4 + ["oss"] * 3,
        "category": ["fobar", "sv", "fobar", "sv", "python", "python", "bash"],
        "difficulty": pd.array([1, 1, 5, 5, None, 2, 2], dtype="Int64"),
        "n_target_tokens": [10, 12, 9, 20, 30, 25, 8],
        "score_math": [1.0, 2.0, -3.0, 4.0, -2.0, 5.0, 3.0],
        "score_code": [0.0, -1.0, -1.0, 2.0, 1.0, 1.0, 4.0],
    })
    for name in BEHAVIOURS:
        df[f"behaviour_{name}"] = 0
    df.loc[df["id"].isin(["a", "c", "f"]), "behaviour_verification"] = [2, 1, 1]
    df.loc[df["id"].isin(["b", "e"]), "behaviour_exploration"] = [1, 3]
    return df


def make_sentence_df() -> pd.DataFrame:
    """Sentences of example f (top for math) and g (top for code). math: verification [1, 3], exploration [3], unlabelled [-0.5, 0.5];
    code: exploration [-1]. Labels come in the shapes storage gives (array, list, None)."""
    return pd.DataFrame({
        "id": ["f"] * 4 + ["g"],
        "measurement": ["math"] * 4 + ["code"],
        "sentence_index": [0, 1, 2, 3, 0],
        "text": ["Let me verify: 1 < 2 & ok.", "So x = 3.", "Wait, <b>another</b> way.", "Done.", "Alternatively."],
        "kind": ["text"] * 5,
        "behaviours": [np.array(["verification"], dtype=object), [], ["verification", "exploration"], None,
                       ["exploration"]],
        "score_removal": [1.0, -0.5, 3.0, 0.5, -1.0],
        "score_token_sum": [0.8, -0.4, 2.5, 0.6, -0.9],
        "n_tokens": [8, 5, 7, 2, 3],
    })


def make_token_df() -> pd.DataFrame:
    """Token scores of the top math example (f, score 5) and the top code example (g, score 4)."""
    math_tokens = ["Okay", ",", " so", " <script>alert('x')</script>", " we", " add", "\n", " Wait", " 3", "+", "4"]
    code_tokens = ["def", " f", "(x", "):", "\n    ", "return", " x", "+", "3"]
    rows = []
    for example, measurement, tokens in (("f", "math", math_tokens), ("g", "code", code_tokens)):
        for position, token in enumerate(tokens):
            rows.append({"id": example, "measurement": measurement, "position": position, "token": token,
                         "score": float(position % 4) - 1.0 + 0.1 * position})
    return pd.DataFrame(rows)


def make_measurement_info() -> dict:
    return {
        "math": {"n_available": 42, "n_used": 40, "fallback": None, "f_value": -0.75},
        "code": {"n_available": 3, "n_used": 30, "fallback": "reference", "f_value": -1.25},
    }


@pytest.fixture
def instance_df() -> pd.DataFrame:
    return make_instance_df()


@pytest.fixture
def sentence_df() -> pd.DataFrame:
    return make_sentence_df()


@pytest.fixture
def token_df() -> pd.DataFrame:
    return make_token_df()


@pytest.fixture
def measurement_info() -> dict:
    return make_measurement_info()
