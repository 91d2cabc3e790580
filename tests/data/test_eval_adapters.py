"""Evaluation-set adapters (GSM8K, MBPP, MATH/MATH-500, AIME, LiveCodeBench) and their tests' convention."""

import base64
import json
import pickle
import zlib

import pytest
from hub_fixtures import assert_prompt_masked, fixture, load, load_bound, load_with_datasets, to_parquet

from infra_pl.data.eval_adapters import decode_lcb_tests, mbpp_entry_point
from infra_pl.data.schema import DataError
from infra_pl.data.sources import Source, load_source
from infra_pl.eval.math_answer import answers_match, extract_answer


def test_gsm8k_reference_and_answer(small_tokenizer):
    examples = load("gsm8k.jsonl", "gsm8k")
    assert [e["answer"] for e in examples] == ["14", "950"]
    reference = examples[0]["messages"][-1]["content"]
    assert "<<" not in reference and reference.endswith("The answer is: 14")
    assert extract_answer(reference) == "14"  # the scorer reads the reference the way it reads generations
    assert {(e["domain"], e["category"], e["difficulty"]) for e in examples} == {("math", "gsm8k", None)}
    for example in examples:
        assert_prompt_masked(small_tokenizer, example)


def test_gsm8k_without_final_line_is_a_bad_row(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "q?", "answer": "no marker here"}) + "\n")
    with pytest.raises(DataError, match=r"gsm.jsonl, row 1: .*'#### <answer>'.*\[empty answer\]"):
        load_source(Source(str(path), adapter="gsm8k"))


def test_mbpp_full_and_sanitized(small_tokenizer, tmp_path, monkeypatch):
    full = load_with_datasets(monkeypatch, tmp_path, fixture("mbpp_full.jsonl"), "mbpp", "json")
    sanitized = load_source(Source(str(to_parquet("mbpp_sanitized.jsonl", tmp_path)), adapter="mbpp"))
    first = full[0]
    assert (first["domain"], first["category"], first["entry_point"]) == ("code", "mbpp", "digit_product")
    assert first["tests"] == ["assert digit_product(123) == 6", "assert digit_product(405) == 0", "assert digit_product(7) == 7"]
    assert "\r" not in first["messages"][-1]["content"] and first["messages"][-1]["content"].startswith("```python\n")
    assert "Your code should pass these tests:\nassert digit_product(123) == 6" in first["messages"][1]["content"]
    assert full[1]["test_setup_code"] == "import math" and full[1]["entry_point"] == "by_length"
    assert sanitized[0]["test_setup_code"] == "import math" and sanitized[0]["entry_point"] == "is_square"
    for example in full + sanitized:
        assert_prompt_masked(small_tokenizer, example)


def test_mbpp_options_and_entry_point():
    examples, _ = load_bound("mbpp_full.jsonl", "mbpp", {"show_tests": False, "challenge_tests": True})
    assert "assert" not in examples[0]["messages"][1]["content"]
    assert examples[0]["tests"][-1] == "assert digit_product(999) == 729"
    assert mbpp_entry_point("def helper(x):\n    pass\ndef main_fn(y):\n    pass", ["assert set(main_fn(1)) == {1}"]) == "main_fn"


@pytest.mark.filterwarnings("ignore:.*leaves out rows")
@pytest.mark.filterwarnings("ignore:.*left out 1 row")
def test_reference_programs_pass_their_own_tests():
    """The tests are runnable by our sandbox: MBPP asserts and OpenThoughts' APPS/TACO cases."""
    from infra_pl.eval.code_extract import extract_code
    from infra_pl.eval.sandbox import check_many

    examples = load("mbpp_full.jsonl", "mbpp")
    examples += [e for e in load("openthoughts_metadata.jsonl", "openthoughts") if e["domain"] == "code"]
    jobs = [(extract_code(e["messages"][-1]["content"]), e["tests"], e["test_setup_code"]) for e in examples]
    results = check_many(jobs)
    assert [r.status for r in results] == ["ok"] * len(examples), [r.stderr[-300:] for r in results]


def test_math_and_math500_levels_categories_answers(small_tokenizer, tmp_path):
    math = load_source(Source(str(to_parquet("math.jsonl", tmp_path)), adapter="math"))
    assert [(e["category"], e["difficulty"], e["answer"]) for e in math] == [
        ("Prealgebra", 1, "\\frac{3}{4}"),
        ("Number Theory", 3, "9"),
        ("Algebra", None, "8"),  # "Level ?" is an unknown level, not an error
    ]
    math500 = load("math500.jsonl", "math")
    assert [(e["category"], e["difficulty"], e["answer"]) for e in math500] == [("Number Theory", 2, "13"), ("Algebra", 1, "5")]
    for example in math + math500:
        assert_prompt_masked(small_tokenizer, example)
        assert answers_match(extract_answer(example["messages"][-1]["content"]), example["answer"])


def test_math_long_cot_prompt_option():
    examples, _ = load_bound("math500.jsonl", "math", {"prompt": "Return your final response within \\boxed{}. {problem}", "system": "@long_cot"})
    assert examples[0]["messages"][1]["content"] == "Return your final response within \\boxed{}. What is the largest prime factor of 91?"


def test_aime_2024_and_2025_layouts(small_tokenizer):
    a24 = load("aime2024.jsonl", "aime")
    a25 = load("aime2025.jsonl", "aime")
    assert [(e["category"], e["answer"]) for e in a24] == [("aime2024", "40")]
    assert [(e["category"], e["answer"]) for e in a25] == [("aime2025", "1"), ("aime", "10")]
    assert a25[0]["messages"][-1]["content"] == "The answer is \\boxed{1}."  # no solution column
    assert "\\boxed{040}" in a24[0]["messages"][-1]["content"]
    for example in a24 + a25:
        assert_prompt_masked(small_tokenizer, example)


def test_livecodebench_stdin_and_functional(small_tokenizer, tmp_path, monkeypatch):
    examples = load_with_datasets(monkeypatch, tmp_path, fixture("livecodebench.jsonl"), "livecodebench", "json")
    stdin, functional = examples
    assert (stdin["category"], stdin["difficulty"], stdin["entry_point"]) == ("atcoder", 1, None)
    # public + the compressed private cases
    assert stdin["tests"] == ["check_stdio('1 2\\n', '3\\n')", "check_stdio('10 -4\\n', '6\\n')", "check_stdio('0 0\\n', '0\\n')"]
    assert "standard input" in stdin["messages"][1]["content"]
    assert (functional["category"], functional["difficulty"], functional["entry_point"]) == ("leetcode", 2, "largestSum")
    assert functional["tests"] == ["check_call(Solution().largestSum, [[3, 1, 4], 2], 7)", "check_call(Solution().largestSum, [[5], 1], 5)"]
    assert "class Solution:" in functional["messages"][1]["content"]
    for example in examples:
        assert_prompt_masked(small_tokenizer, example)
    public_only, _ = load_bound("livecodebench.jsonl", "livecodebench", {"private_tests": False})
    assert len(public_only[0]["tests"]) == 1


def test_livecodebench_tests_run_in_the_sandbox():
    """A correct and a wrong program for each test kind, through the real sandbox."""
    from infra_pl.eval.sandbox import check_many

    stdin, functional = load("livecodebench.jsonl", "livecodebench")
    script = "a, b = map(int, input().split())\nprint(a + b)"
    guarded = "import sys\ndef main():\n    a, b = map(int, sys.stdin.buffer.readline().split())\n    print(a - b)\nif __name__ == '__main__':\n    main()"
    solution = "class Solution:\n    def largestSum(self, nums: List[int], k: int) -> int:\n        return sum(sorted(nums)[-k:])"
    wrong = "class Solution:\n    def largestSum(self, nums, k):\n        return max(nums)"
    jobs = [
        (script, stdin["tests"], stdin["test_setup_code"]),
        (guarded, stdin["tests"], stdin["test_setup_code"]),
        (solution, functional["tests"], functional["test_setup_code"]),
        (wrong, functional["tests"], functional["test_setup_code"]),
    ]
    assert [r.passed for r in check_many(jobs)] == [True, False, True, False]


def test_lcb_decoding_refuses_pickled_objects():
    cases = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}]
    packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
    assert decode_lcb_tests(packed) == cases
    assert decode_lcb_tests(json.dumps(cases)) == cases and decode_lcb_tests(None) == []
    evil = base64.b64encode(zlib.compress(pickle.dumps(Source("x")))).decode()  # needs a class to load
    with pytest.raises(ValueError, match="neither JSON nor"):
        decode_lcb_tests(evil)


def test_livecodebench_bad_tests_are_counted(tmp_path):
    row = json.loads(fixture("livecodebench.jsonl").read_text().splitlines()[0])
    rows = [row, {**row, "public_test_cases": "not json", "private_test_cases": ""}, {**row, "public_test_cases": "[]", "private_test_cases": None}]
    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 2: .*public_test_cases.*\[malformed tests\]"):
        load_source(Source(str(path), adapter="livecodebench"))
    from infra_pl.data.schema import RowLocation
    from infra_pl.data.sources import ADAPTERS, read_raw_rows

    bound = ADAPTERS["livecodebench"].bind({"bad_rows": "skip"})
    file, raw_rows = read_raw_rows(Source(str(path)))
    kept = [bound(r, RowLocation(file, n)) for n, r in raw_rows]
    assert sum(k is not None for k in kept) == 1
    with pytest.warns(UserWarning, match=r"malformed tests \(1; first at row 2\), missing tests \(1; first at row 3\)"):
        bound.finish()
