"""The difficulty-table builder: levels from TACO / APPS / MATH-schema rows, joined to training data."""

import json

import pytest

from infra_pl.data.difficulty import DifficultyOptions, apply_difficulty
from infra_pl.data.difficulty_table import build_difficulty_table, main, parse_source
from infra_pl.data.schema import DataError


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_table_from_hub_schema_rows_joins_to_bespoke_style_prompts(tmp_path):
    taco = _write(tmp_path / "taco.jsonl", [  # TACO schema: question, difficulty, ...
        {"question": "Print the sum of two integers.", "difficulty": "EASY", "source": "codeforces"},
        {"question": "Count inversions fast.", "difficulty": "VERY_HARD", "source": "codechef"},
        {"question": "Unrated task.", "difficulty": "UNKNOWN_DIFFICULTY", "source": "atcoder"},
    ])
    math = _write(tmp_path / "math.jsonl", [  # MATH schema: problem, level, type, solution
        {"problem": "Find $x$ if $2x = 6$.", "level": "Level 1", "type": "Algebra", "solution": "$x=3$"},
        {"problem": "Print the sum of two integers.", "level": "Level 5", "type": "Algebra", "solution": "-"},
    ])
    out = tmp_path / "levels.jsonl"
    assert main(["--out", str(out), "--source", f"path={taco},key=question,level=difficulty",
                 "--source", f"path={math},key=problem,level=level"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["problem"]: r["level"] for r in rows} == {
        "Print the sum of two integers.": 1, "Count inversions fast.": 4, "Find $x$ if $2x = 6$.": 1}
    _, summary = build_difficulty_table([parse_source(f"path={taco},key=question,level=difficulty"),
                                         parse_source(f"path={math},key=problem,level=level")])
    assert summary.per_source["taco.jsonl"]["no_level"] == 1 and summary.per_source["math.jsonl"]["conflicts"] == 1

    user = "Generate an executable Python function generated from the given prompt. Simply call the function after the definition.Print the sum of two integers."
    examples = [{"domain": "code", "difficulty": None, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "code"}]},
                {"domain": "math", "difficulty": None, "messages": [{"role": "user", "content": "Return your final response within \\boxed{}. Find $x$ if $2x = 6$."}, {"role": "assistant", "content": "3"}]}]
    levelled, summary = apply_difficulty(examples, DifficultyOptions(signals=["table"], table=str(out)))
    assert [e["difficulty"] for e in levelled] == [1, 1]
    assert {e["difficulty_source"] for e in levelled} == {"table:levels.jsonl"}


def test_bad_source_specs_and_columns_are_named(tmp_path):
    with pytest.raises(DataError, match="key=value"):
        parse_source("BAAI/TACO")
    rows = _write(tmp_path / "apps.jsonl", [{"question": "q", "difficulty": "interview"}])
    with pytest.raises(DataError, match="needs columns 'problem' and 'level'"):
        build_difficulty_table([parse_source(f"path={rows}")])
