"""Training-set adapters on hand-written rows in each dataset's hub schema (nothing downloaded)."""

import warnings

import pytest
from hub_fixtures import (
    assert_prompt_masked,
    fixture,
    load,
    load_bound,
    load_with_datasets,
    to_parquet,
)

from infra_pl.data.adapter_base import SYSTEM_PRESETS
from infra_pl.data.schema import DataError, content_id
from infra_pl.data.sources import ADAPTERS, Source, load_source
from infra_pl.data.traces import BEGIN_SOLUTION, BEGIN_THOUGHT


def test_every_public_adapter_is_registered():
    expected = {"metamathqa", "magicoder", "bespoke_stratos", "openthoughts", "gsm8k", "mbpp", "math", "aime", "livecodebench"}
    assert expected <= set(ADAPTERS)


# ----------------------------------------------------------------------------------- MetaMathQA


def test_metamathqa_categories_answers_and_ids(small_tokenizer):
    examples = load("metamathqa.jsonl", "metamathqa")
    assert [e["category"] for e in examples] == ["GSM_AnsAug", "MATH_FOBAR", "GSM_SV", "MATH_Rephrased"]
    assert [e["answer"] for e in examples] == ["12", "5", "12", "7"]
    assert {e["domain"] for e in examples} == {"math"} and {e["source"] for e in examples} == {"metamathqa"}
    assert all(e["difficulty"] is None for e in examples)  # no MATH table given
    first = examples[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][0]["content"] == SYSTEM_PRESETS["@short_math"]
    assert first["id"] == content_id(first["messages"], "math", "metamathqa")
    for example in examples:
        assert_prompt_masked(small_tokenizer, example)


def test_metamathqa_same_examples_from_jsonl_parquet_and_datasets(tmp_path, monkeypatch):
    from_jsonl = load("metamathqa.jsonl", "metamathqa")
    from_parquet = load_source(Source(str(to_parquet("metamathqa.jsonl", tmp_path)), adapter="metamathqa"))
    via_json = load_with_datasets(monkeypatch, tmp_path, fixture("metamathqa.jsonl"), "metamathqa", "json")
    ids = [e["id"] for e in from_jsonl]
    assert [e["id"] for e in from_parquet] == ids
    assert [e["id"] for e in via_json] == ids


def test_metamathqa_math_level_join_through_original_question():
    with pytest.warns(UserWarning, match=r"difficulty_table math_train_levels.jsonl: 2 row\(s\) joined, 0 not found"):
        examples, report = load_bound("metamathqa.jsonl", "metamathqa", {"difficulty_table": str(fixture("math_train_levels.jsonl"))})
    levels = {e["category"]: e["difficulty"] for e in examples}
    assert levels == {"GSM_AnsAug": None, "MATH_FOBAR": 1, "GSM_SV": None, "MATH_Rephrased": 3}
    assert report.seen == 4 and not report.skipped


def test_metamathqa_bad_rows_error_names_file_row_and_reason():
    with pytest.raises(DataError, match=r"metamathqa_bad.jsonl, row 2: .*'GSM_Backwards'.*\[unknown type\].*bad_rows: skip"):
        load("metamathqa_bad.jsonl", "metamathqa")


def test_metamathqa_bad_rows_skip_counts_each_reason():
    with pytest.warns(UserWarning, match=r"read 6 row\(s\); skipped 4 bad row\(s\)") as caught:
        examples, report = load_bound("metamathqa_bad.jsonl", "metamathqa", {"bad_rows": "skip"})
    assert len(examples) == 2
    assert dict(report.skipped) == {"unknown type": 1, "empty answer": 1, "missing field": 1, "duplicate example": 1}
    assert report.first_row == {"unknown type": 2, "empty answer": 3, "missing field": 4, "duplicate example": 6}
    message = str(caught[0].message)
    assert "metamathqa_bad.jsonl" in message and "unknown type (1; first at row 2)" in message


def test_metamathqa_options_through_load_source():
    with pytest.warns(UserWarning, match="skipped 4 bad row"):
        assert len(load("metamathqa_bad.jsonl", "metamathqa", options={"bad_rows": "skip"})) == 2
    with pytest.warns(UserWarning, match="2 row"):
        joined = load("metamathqa.jsonl", "metamathqa", options={"difficulty_table": str(fixture("math_train_levels.jsonl"))})
    assert [e["difficulty"] for e in joined] == [None, 1, None, 3]
    assert joined[1].get("difficulty_source", "table:math_train_levels.jsonl") == "table:math_train_levels.jsonl"
    with pytest.raises(DataError, match="has no option.*'bad_row'"):
        load("metamathqa.jsonl", "metamathqa", options={"bad_row": "skip"})


def test_unknown_option_and_bad_policy_are_errors():
    with pytest.raises(DataError, match=r"adapter 'metamathqa' has no option\(s\) \['langauges'\]"):
        ADAPTERS["metamathqa"].bind({"langauges": ["python"]})
    with pytest.raises(DataError, match="bad_rows must be one of"):
        ADAPTERS["magicoder"].bind({"bad_rows": "ignore"})
    with pytest.raises(DataError, match=r"adapter 'openthoughts': option other_domains must be one of \('skip', 'math'\)"):
        ADAPTERS["openthoughts"].bind({"other_domains": "science"})
    with pytest.raises(DataError, match="unknown system prompt preset"):
        ADAPTERS["gsm8k"].bind({"system": "@nope"})


# ------------------------------------------------------------------------------------ Magicoder


def test_magicoder_language_categories(small_tokenizer, tmp_path):
    examples = load("magicoder.jsonl", "magicoder")
    assert [(e["domain"], e["category"]) for e in examples] == [("code", "python"), ("code", "cpp"), ("code", "typescript")]
    assert all(e["tests"] is None and e["answer"] is None for e in examples)
    assert examples[0]["messages"][1]["content"].startswith("You are given a helper")
    parquet = load_source(Source(str(to_parquet("magicoder.jsonl", tmp_path)), adapter="magicoder"))
    assert [e["id"] for e in parquet] == [e["id"] for e in examples]
    for example in examples:
        assert_prompt_masked(small_tokenizer, example)


def test_magicoder_language_filter_is_counted():
    with pytest.warns(UserWarning, match=r"left out 2 row\(s\) by option: language not in \['python'\] \(2\)"):
        examples, report = load_bound("magicoder.jsonl", "magicoder", {"languages": ["Python"]})
    assert [e["category"] for e in examples] == ["python"]
    assert sum(report.filtered.values()) == 2 and not report.skipped


# ------------------------------------------------------------------------------ Bespoke-Stratos


def test_bespoke_stratos_domains_categories_answers_and_behaviours(small_tokenizer):
    assert all(e["behaviours"] is None for e in load("bespoke_stratos.jsonl", "bespoke_stratos"))  # opt-in: untagged is None, not zeros
    examples, _ = load_bound("bespoke_stratos.jsonl", "bespoke_stratos", {"tag_behaviours": True})
    assert [(e["domain"], e["category"]) for e in examples] == [("math", "math"), ("code", "stdin"), ("code", "call_based")]
    math, stdin, call = examples
    assert math["answer"] == "21" and stdin["answer"] is None
    assert [m["role"] for m in math["messages"]] == ["system", "user", "assistant"]
    assert math["messages"][0]["content"].startswith("Stand-in for the dataset's long system prompt")
    assert math["messages"][2]["content"].startswith(BEGIN_THOUGHT) and BEGIN_SOLUTION in math["messages"][2]["content"]
    # rule-tagged counts: the math trace checks, corrects itself and explores after the answer
    assert math["behaviours"]["verification"] >= 1 and math["behaviours"]["backtracking"] == 1
    assert math["behaviours"]["exploration"] == 1
    assert stdin["behaviours"]["exploration"] == 1  # "Another way..." after "So the code would be"
    assert call["behaviours"]["backward_chaining"] == 1
    for example in examples:
        assert_prompt_masked(small_tokenizer, example)


def test_bespoke_stratos_from_parquet_and_datasets_parquet(tmp_path, monkeypatch):
    parquet = to_parquet("bespoke_stratos.jsonl", tmp_path)
    local = load_source(Source(str(parquet), adapter="bespoke_stratos"))
    hub = load_with_datasets(monkeypatch, tmp_path, parquet, "bespoke_stratos", "parquet")
    expected = [e["id"] for e in load("bespoke_stratos.jsonl", "bespoke_stratos")]
    assert [e["id"] for e in local] == expected == [e["id"] for e in hub]


def test_bespoke_stratos_missing_turns():
    with pytest.raises(DataError, match=r"row 2: .*does not end with a non-empty assistant turn \[missing conversation turn\]"):
        load("bespoke_stratos_bad.jsonl", "bespoke_stratos")
    with pytest.warns(UserWarning, match="missing conversation turn \\(2; first at row 2\\), unknown role \\(1; first at row 4\\)"):
        examples, report = load_bound("bespoke_stratos_bad.jsonl", "bespoke_stratos", {"bad_rows": "skip"})
    assert len(examples) == 1 and examples[0]["answer"] == "2"


def test_bespoke_stratos_options_system_and_domain():
    examples, _ = load_bound("bespoke_stratos.jsonl", "bespoke_stratos", {"system": "@long_cot", "domain": "code", "tag_behaviours": False})
    assert all(e["domain"] == "code" for e in examples)
    assert examples[0]["messages"][0]["content"] == SYSTEM_PRESETS["@long_cot"]
    assert all(e["behaviours"] is None for e in examples)
    no_system, _ = load_bound("bespoke_stratos.jsonl", "bespoke_stratos", {"system": ""})
    assert [m["role"] for m in no_system[0]["messages"]] == ["user", "assistant"]


# -------------------------------------------------------------------------------- OpenThoughts


def test_openthoughts_default_config_reads_like_stratos(small_tokenizer):
    examples, _ = load_bound("openthoughts_default.jsonl", "openthoughts", {"tag_behaviours": True})
    assert [(e["domain"], e["category"], e["source"]) for e in examples] == [
        ("math", "math", "openthoughts"),
        ("code", "stdin", "openthoughts"),
    ]
    assert examples[0]["answer"] == "2" and examples[0]["behaviours"]["verification"] == 1
    for example in examples:
        assert_prompt_masked(small_tokenizer, example)


def test_openthoughts_metadata_config_domains_tests_and_filter(small_tokenizer, tmp_path, monkeypatch):
    with warnings.catch_warnings(record=True) as caught:  # the biology row is left out (and said so)
        warnings.simplefilter("always")
        examples = load_with_datasets(monkeypatch, tmp_path, fixture("openthoughts_metadata.jsonl"), "openthoughts", "json")
    assert any("domain not math/code" in str(w.message) for w in caught)
    assert [(e["domain"], e["category"]) for e in examples] == [("math", "numina_math"), ("code", "apps"), ("code", "taco")]
    math, apps, taco = examples
    assert math["answer"] == "25"
    assistant = math["messages"][-1]["content"]
    assert assistant.startswith(BEGIN_THOUGHT) and "Working backward" in assistant and BEGIN_SOLUTION in assistant
    assert apps["tests"] == ["check_stdio('abc\\n', 'cba\\n')", "check_stdio('racecar\\n', 'racecar\\n')", "check_stdio('hello\\n', 'olleh\\n')"]
    assert "_stdio_feed('abc\\n')" in apps["test_setup_code"] and apps["entry_point"] is None
    assert taco["tests"] == ["check_call(add_up, [2, 3], [5], wrapped=True)", "check_call(add_up, [-1, 1], [0], wrapped=True)"]
    assert taco["entry_point"] == "add_up" and "def add_up(a, b)" in taco["messages"][1]["content"]
    for example in examples:
        assert_prompt_masked(small_tokenizer, example)


def test_openthoughts_metadata_behaviours_when_asked():
    with pytest.warns(UserWarning, match="left out 1 row"):
        examples, _ = load_bound("openthoughts_metadata.jsonl", "openthoughts", {"tag_behaviours": True})
    assert examples[0]["behaviours"]["backward_chaining"] == 1 and examples[0]["behaviours"]["exploration"] == 1
    assert examples[0]["behaviours"]["verification"] == 1


def test_openthoughts_metadata_options():
    examples, report = load_bound(
        "openthoughts_metadata.jsonl", "openthoughts",
        {"other_domains": "math", "math_prompt": "Return your final response within \\boxed{}. {problem}", "max_tests": 1},
    )
    assert [e["domain"] for e in examples] == ["math", "code", "code", "math"] and not report.filtered
    assert examples[0]["messages"][1]["content"].startswith("Return your final response within \\boxed{}. Let $a$")
    assert len(examples[1]["tests"]) == 1


def test_packaged_builder_with_data_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    source = Source("json", adapter="livecodebench", split="train", data_files=str(fixture("livecodebench.jsonl")))
    assert [e["category"] for e in load_source(source)] == ["atcoder", "leetcode"]
