"""Difficulty signals: named levels, joinable tables, length quantiles, and their provenance."""

import pytest
from hub_fixtures import fixture, load

from infra_pl.data.difficulty import (
    DifficultyOptions,
    DifficultyTable,
    LengthLevels,
    apply_difficulty,
    assign_difficulty,
    parse_level,
    reasoning_length,
)
from infra_pl.data.schema import DataError


@pytest.mark.parametrize(
    "value, level",
    [(3, 3), ("3", 3), ("Level 4", 4), ("level 5", 5), ("easy", 1), ("Medium", 2), ("hard", 3),
     ("introductory", 1), ("interview", 2), ("competition", 3), (2.0, 2), (None, None), ("Level ?", None), ("", None)],
)
def test_parse_level(value, level):
    assert parse_level(value) == level


def test_parse_level_rejects_unknown_vocabulary():
    with pytest.raises(ValueError, match="unrecognised difficulty 'brutal'"):
        parse_level("brutal")


def _example(domain, words, difficulty=None, prompt="p"):
    return {
        "domain": domain,
        "difficulty": difficulty,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": f"<|begin_of_thought|>\n{' '.join(['w'] * words)}\n<|end_of_thought|>\n"
                                             "<|begin_of_solution|>\nnot counted at all\n<|end_of_solution|>"},
        ],
    }


def test_length_levels_are_equal_sized_quantiles_per_domain():
    examples = [_example("math", n) for n in range(1, 11)] + [_example("code", 100 * n) for n in range(1, 6)]
    assert reasoning_length(examples[0]) == 1  # only the thought counts
    levels = LengthLevels.fit(examples, k=5)
    assert [levels.level(e) for e in examples[:10]] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [levels.level(e) for e in examples[10:]] == [1, 2, 3, 4, 5]


def test_assign_difficulty_priority_and_summary(tmp_path):
    table = tmp_path / "levels.csv"
    table.write_text("problem,difficulty\n\"Find  x.\",interview\nOther,Level 2\n")
    examples = [
        {**_example("math", 5, difficulty=4), "difficulty_source": "math_level"},
        _example("math", 7, prompt="Return your final response within \\boxed{}. Find x."),  # joined through the stripped prompt
        _example("math", 50),
        _example("code", 3),
    ]
    out, summary = assign_difficulty(examples, table=DifficultyTable.load(table, key="problem", level="difficulty"), k=2)
    assert [(e["difficulty"], e["difficulty_source"]) for e in out] == [
        (4, "math_level"), (2, "table:levels.csv"), (2, "length_quantile"), (1, "length_quantile"),
    ]
    assert summary.to_dict() == {"code": {"length_quantile": 1}, "math": {"length_quantile": 1, "math_level": 1, "table:levels.csv": 1}}
    assert summary.mixed_domains() == ["math"]
    with pytest.warns(UserWarning, match="may not be comparable"):
        summary.warn()
    only_given, summary = assign_difficulty(examples, signals=("given",))
    assert [e["difficulty"] for e in only_given] == [4, None, None, None]
    assert summary.to_dict()["math"] == {"math_level": 1, "none": 2}


def test_difficulty_table_errors_name_file_and_row(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"problem": "a", "level": 1}\n{"problem": "a", "level": 2}\n')
    with pytest.raises(DataError, match=r"t.jsonl, row 2: problem listed twice with different levels"):
        DifficultyTable.load(bad)
    bad.write_text('{"question": "a", "level": 1}\n')
    with pytest.raises(DataError, match=r"t.jsonl, row 1: difficulty table needs fields 'problem' and 'level'"):
        DifficultyTable.load(bad)
    bad.write_text('{"problem": "a", "level": "brutal"}\n')
    with pytest.raises(DataError, match=r"row 1: field 'level': unrecognised difficulty"):
        DifficultyTable.load(bad)
    with pytest.raises(DataError, match="difficulty table not found"):
        DifficultyTable.load(tmp_path / "missing.jsonl")


def test_math_table_fixture_and_adapter_levels():
    table = DifficultyTable.load(fixture("math_train_levels.jsonl"))
    assert table.lookup("What is the value of   $3x + 2$ when $x = 5$?") == 1  # whitespace-insensitive key
    assert table.lookup("How many primes are below 20?") is None  # "Level ?" rows carry no level
    lcb = load("livecodebench.jsonl", "livecodebench")
    assert [e["difficulty"] for e in lcb] == [1, 2]


def test_apply_difficulty_options(tmp_path):
    examples = [_example("math", n) for n in range(1, 9)]
    out, summary = apply_difficulty(examples, DifficultyOptions(k=4))
    assert [e["difficulty"] for e in out] == [1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(DataError, match="the 'table' signal and a table path go together"):
        apply_difficulty(examples, DifficultyOptions(signals=["table", "length"]))
    with pytest.raises(DataError, match="go together"):
        apply_difficulty(examples, DifficultyOptions(table=str(fixture("math_train_levels.jsonl"))))
    out, summary = apply_difficulty(
        [_example("math", 3, prompt="Find the sum of the roots of $x^2 - 7x + 10 = 0$.")],
        DifficultyOptions(signals=["table", "length"], table=str(fixture("math_train_levels.jsonl"))),
    )
    assert (out[0]["difficulty"], out[0]["difficulty_source"]) == (3, "table:math_train_levels.jsonl")


def test_row_difficulty_fields_are_read_with_their_source():
    """OpenThoughts-style rows that carry a difficulty rating keep it, named by source and field."""
    from infra_pl.data.adapter_base import AdapterContext  # noqa: F401 - registers adapters
    from infra_pl.data.adapters import _row_difficulty
    from infra_pl.data.difficulty import parse_level

    example = {}
    _row_difficulty({"difficulty": "MEDIUM_HARD", "source": "taco"}, example)
    assert example == {"difficulty": 3, "difficulty_source": "taco:difficulty"}
    assert parse_level("VERY_HARD") == 4 and parse_level("UNKNOWN_DIFFICULTY") is None
    untouched = {}
    _row_difficulty({"source": "apps"}, untouched)
    assert untouched == {}


def test_a_table_that_matches_no_problem_is_an_error(tmp_path):
    from infra_pl.data.difficulty import DifficultyOptions, apply_difficulty
    from infra_pl.data.schema import DataError

    table = tmp_path / "levels.jsonl"
    table.write_text('{"problem": "Something else entirely.", "level": "Level 2"}\n')
    example = {"domain": "math", "messages": [{"role": "user", "content": "What is 2+2?"},
                                               {"role": "assistant", "content": "4"}], "difficulty": None}
    with pytest.raises(DataError, match="matched none"):
        apply_difficulty([example], DifficultyOptions(signals=["table", "length"], table=str(table)))


def test_length_fallback_is_named_in_the_summary_and_the_flip_figure(tmp_path):
    import json
    import warnings as warnings_module

    from infra_pl.data.difficulty import DifficultyOptions, apply_difficulty
    from infra_pl.data.flip import write_difficulty_histograms

    examples = [{"domain": "math", "difficulty": None,
                 "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * (k + 1)}]}
                for k in range(10)]
    with warnings_module.catch_warnings(record=True) as caught:
        warnings_module.simplefilter("always")
        levelled, summary = apply_difficulty(examples, DifficultyOptions(signals=["length"]))
        summary.warn()
    assert any("length quintile" in str(w.message) for w in caught)
    assert summary.note() == "difficulty = length quintile (math: 10)"
    _, json_path = write_difficulty_histograms(levelled, levelled, tmp_path, source_note=summary.note())
    assert json.loads(json_path.read_text())["difficulty_source_note"].startswith("difficulty = length quintile")
