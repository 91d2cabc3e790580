import json

import pytest

from infra_pl.data.schema import DataError, content_id
from infra_pl.data.sources import Source, load_source

GOOD = {
    "domain": "math",
    "category": "forward",
    "difficulty": 1,
    "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
    "answer": "2",
}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_local_jsonl_and_parquet_give_same_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD, {**GOOD, "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    from_jsonl = load_source(Source(str(write_jsonl(tmp_path / "d.jsonl", rows))))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    from_parquet = load_source(Source(str(tmp_path / "d.parquet")))
    assert [e["id"] for e in from_jsonl] == [e["id"] for e in from_parquet]
    assert from_jsonl[0]["id"] == content_id(GOOD["messages"], "math", "local")
    assert from_jsonl[0]["difficulty"] == 1 and from_jsonl[0]["behaviours"] is None  # untagged: None, never zeros


def test_ids_are_stable_under_reordering(tmp_path):
    a = {**GOOD}
    b = {**GOOD, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    first = load_source(Source(str(write_jsonl(tmp_path / "1.jsonl", [a, b]))))
    second = load_source(Source(str(write_jsonl(tmp_path / "2.jsonl", [b, a]))))
    assert {e["id"] for e in first} == {e["id"] for e in second}
    assert first[0]["id"] == second[1]["id"]


@pytest.mark.parametrize(
    "row, message",
    [
        ('{"domain": "math", "messages": [', "row 2: malformed JSON"),
        ({k: v for k, v in GOOD.items() if k != "messages"}, "row 2: field 'messages' is missing"),
        ({**GOOD, "domain": "poetry"}, "row 2: field 'domain' must be one of"),
        ({**GOOD, "messages": [{"role": "user", "content": "q"}]}, "must end with a non-empty assistant turn"),
        ({**GOOD, "messages": [{"role": "assistant", "content": "a"}]}, "has no user turn"),
        ({**GOOD, "difficulty": "hard"}, "field 'difficulty' must be an integer"),
        ({**GOOD, "behaviours": {"daydreaming": 1}}, "unknown behaviour"),
        (GOOD, "duplicate example id"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(DataError, match=message) as err:
        load_source(Source(str(path)))
    assert "bad.jsonl" in str(err.value)


def test_empty_file_unknown_adapter_unknown_type(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        load_source(Source(str(empty)))
    with pytest.raises(DataError, match="unknown adapter 'nope'"):
        load_source(Source(str(empty), adapter="nope"))
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a\n")
        load_source(Source(str(tmp_path / "x.csv")))
    with pytest.raises(DataError, match="file not found"):
        load_source(Source(str(tmp_path / "missing.jsonl")))
    with pytest.raises(DataError, match="unknown demo split"):
        load_source(Source("demo:nope"), demo_files={})


def test_limit(tmp_path):
    rows = [{**GOOD, "messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "a"}]} for i in range(5)]
    assert len(load_source(Source(str(write_jsonl(tmp_path / "d.jsonl", rows)), limit=3))) == 3


@pytest.mark.parametrize("suffix, text, message", [
    (".jsonl", '{"domain": "unterminated', "Unterminated string starting at column 12)"),
    (".jsonl", '{"domain": [1, 2 3]}\n', "Expecting ',' delimiter at column 18)"),
    (".json", '[{"domain": "unterminated]', "Unterminated string starting at line 1)"),
])
def test_malformed_json_says_where_once(tmp_path, suffix, text, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_source(Source(str(path)))
    assert message in str(err.value) and "at at" not in str(err.value)
