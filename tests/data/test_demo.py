"""The embedded demo: deterministic, held out, checkable, graded by difficulty, labelled, cached."""

from __future__ import annotations

import json
import os
import re
import statistics
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from infra_pl.data import demo
from infra_pl.data.demo import BEHAVIOURS, SYSTEM_PROMPT, ensure_demo, generate_demo, generate_problems, write_demo
from infra_pl.data.schema import validate_examples
from infra_pl.data.sentences import split_sentences

SMALL = {"n_train": 40, "n_eval": 10, "n_pool": 20}
BOXED = re.compile(r"The answer is \\boxed\{(-?\d+)\}\.\n<\|end_of_solution\|>$")
CODE = re.compile(r"```python\n(.*?)\n```", re.S)


@pytest.fixture(scope="module")
def problems() -> dict[str, list[demo.Problem]]:
    return generate_problems()


@pytest.fixture(scope="module")
def records(problems: dict[str, list[demo.Problem]]) -> dict[str, list[dict[str, Any]]]:
    return {split: [p.to_record() for p in items] for split, items in problems.items()}


def assistant(record: dict[str, Any]) -> str:
    return record["messages"][2]["content"]


def thought_steps(record: dict[str, Any]) -> int:
    texts = [label["text"] for label in record["sentence_labels"]]
    return texts.index("<|end_of_thought|>") - texts.index("<|begin_of_thought|>") - 1


def by_level(items: list[dict[str, Any]], domain: str, value: Any) -> list[float]:
    return [
        statistics.mean(value(r) for r in items if r["domain"] == domain and r["difficulty"] == level)
        for level in demo.LEVELS
    ]


def test_same_seed_same_bytes_other_seed_differs() -> None:
    first = {k: demo._jsonl(v) for k, v in generate_demo(seed=3, **SMALL).items()}
    second = {k: demo._jsonl(v) for k, v in generate_demo(seed=3, **SMALL).items()}
    other = {k: demo._jsonl(v) for k, v in generate_demo(seed=4, **SMALL).items()}
    assert first == second
    assert all(first[k] != other[k] for k in demo.SPLITS)


def test_generator_leaves_global_random_state_alone() -> None:
    import random

    state = random.getstate()
    generate_demo(**SMALL)
    assert random.getstate() == state


def test_counts_per_split_domain_and_level(records: dict[str, list[dict[str, Any]]]) -> None:
    expected = {"train": (1000, 1000), "eval_math": (200, 0), "eval_code": (0, 200), "pool": (2000, 2000)}
    for split, (n_math, n_code) in expected.items():
        counts = Counter((r["domain"], r["difficulty"]) for r in records[split])
        for level in demo.LEVELS:
            assert counts[("math", level)] == n_math // 5
            assert counts[("code", level)] == n_code // 5
    assert Counter(r["category"] for r in records["eval_math"]) == {c: 50 for c in demo.MATH_CATEGORIES}
    assert Counter(r["category"] for r in records["eval_code"]) == {c: 50 for c in demo.CODE_CATEGORIES}


def test_math_fraction_controls_the_mixture() -> None:
    out = generate_demo(n_train=100, n_eval=5, n_pool=10, math_fraction=0.3)
    assert Counter(r["domain"] for r in out["train"]) == {"math": 30, "code": 70}
    with pytest.raises(ValueError):
        generate_demo(math_fraction=1.5)


def test_eval_questions_are_held_out(records: dict[str, list[dict[str, Any]]]) -> None:
    def questions(split: str) -> set[str]:
        return {r["messages"][1]["content"] for r in records[split]}

    held_out = questions("eval_math") | questions("eval_code")
    assert len(held_out) == 400  # eval items are distinct questions, too
    assert not held_out & questions("train")
    assert not held_out & questions("pool")


def test_records_pass_the_schema_with_unique_ids(records: dict[str, list[dict[str, Any]]]) -> None:
    for split, items in records.items():
        validate_examples(enumerate(items, start=1), split)  # raises on duplicated content ids
    all_items = [r for items in records.values() for r in items]
    keys = {json.dumps(r["messages"]) for r in all_items}
    assert len(keys) == len(all_items)  # no item repeats across splits either


def test_record_layout(records: dict[str, list[dict[str, Any]]]) -> None:
    for record in records["train"][:300] + records["eval_math"][:50] + records["eval_code"][:50]:
        assert record["source"] == "demo"
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        assert record["messages"][0]["content"] == SYSTEM_PROMPT
        text = assistant(record)
        assert text.startswith("<|begin_of_thought|>\n") and text.endswith("\n<|end_of_solution|>")
        assert "\n<|end_of_thought|>\n<|begin_of_solution|>\n" in text
        assert set(record["behaviours"]) == set(BEHAVIOURS)
        if record["domain"] == "math":
            assert record["category"] in demo.MATH_CATEGORIES
            assert BOXED.search(text).group(1) == record["answer"]
            assert "tests" not in record
        else:
            assert record["category"] in demo.CODE_CATEGORIES
            assert len(CODE.findall(text)) == 1 and len(record["tests"]) == 3
            assert f"def {record['entry_point']}(" in text
            assert "answer" not in record


def test_math_answers_equal_the_evaluated_expression(problems: dict[str, list[demo.Problem]]) -> None:
    # The answer is rebuilt digit by digit from the trace's column steps; Python's arithmetic
    # on the reference expression must agree with it.
    math = [p for items in problems.values() for p in items if p.domain == "math"]
    assert len(math) > 100
    for p in math:
        assert eval(p.reference) == int(p.answer), (p.question, p.reference)  # noqa: S307


def test_code_reference_programs_pass_their_tests(records: dict[str, list[dict[str, Any]]]) -> None:
    passed = 0
    for split in ("train", "eval_code", "pool"):
        for record in records[split]:
            if record["domain"] != "code":
                continue
            namespace: dict[str, Any] = {}
            exec(CODE.search(assistant(record)).group(1), namespace)  # noqa: S102 - our own reference
            assert record["tests"], record["id"]
            for test in record["tests"]:
                exec(test, namespace)  # noqa: S102 - each test is an assert statement
                passed += 1
    assert passed > 100


def test_code_tests_are_not_all_the_same_value(records: dict[str, list[dict[str, Any]]]) -> None:
    distinct = [len({t.split(" == ")[1] for t in r["tests"]}) > 1 for r in records["eval_code"]]
    assert sum(distinct) / len(distinct) > 0.9


@pytest.mark.parametrize("domain", ["math", "code"])
def test_difficulty_levels_differ(records: dict[str, list[dict[str, Any]]], domain: str) -> None:
    lengths = by_level(records["train"], domain, lambda r: len(assistant(r)))
    steps = by_level(records["train"], domain, thought_steps)
    subgoals = by_level(records["train"], domain, lambda r: r["behaviours"]["subgoal_setting"])
    assert all(a < b for a, b in zip(lengths, lengths[1:])), lengths
    assert all(a < b for a, b in zip(steps, steps[1:])), steps
    assert subgoals[-1] > subgoals[0]


def test_sequences_stay_short(records: dict[str, list[dict[str, Any]]]) -> None:
    for domain in ("math", "code"):
        level = {k: [len(assistant(r)) for r in records["train"] if r["domain"] == domain and r["difficulty"] == k] for k in (1, 5)}
        assert statistics.median(level[1]) <= 250
        assert statistics.median(level[5]) <= 600
    questions = [len(r["messages"][1]["content"]) for rs in records.values() for r in rs]
    assert statistics.median(questions) <= 150 and max(questions) <= 180


def test_sentence_labels_align_with_the_splitter(records: dict[str, list[dict[str, Any]]]) -> None:
    for split in ("train", "eval_math", "eval_code"):
        for record in records[split]:
            sentences = split_sentences(assistant(record))
            labels = record["sentence_labels"]
            assert [s.text for s in sentences] == [label["text"] for label in labels]
            for sentence, label in zip(sentences, labels):
                assert set(label["behaviours"]) <= set(BEHAVIOURS)
                if sentence.kind != "text":
                    assert label["behaviours"] == []
            counted = Counter(b for label in labels for b in label["behaviours"])
            assert record["behaviours"] == {b: counted[b] for b in BEHAVIOURS}


def test_all_behaviours_occur_and_vary(records: dict[str, list[dict[str, Any]]]) -> None:
    for domain in ("math", "code"):
        items = [r for r in records["train"] if r["domain"] == domain]
        for behaviour in BEHAVIOURS:
            values = Counter(r["behaviours"][behaviour] for r in items)
            assert len(values) >= 2, (domain, behaviour, values)  # present in some, absent in others
    math = [r for r in records["train"] if r["domain"] == "math"]
    assert all(r["behaviours"]["backward_chaining"] >= 1 for r in math if r["category"] == "inverse")
    assert all(r["behaviours"]["verification"] >= 1 for r in math if r["category"] == "self_verification")


def test_backtracking_corrects_a_wrong_step(records: dict[str, list[dict[str, Any]]]) -> None:
    checked = 0
    for record in records["train"]:
        labels = record["sentence_labels"]
        for i, label in enumerate(labels):
            if "backtracking" in label["behaviours"]:
                assert label["text"].startswith(("Wait", "Hmm"))
                assert labels[i - 1]["behaviours"] == []  # the abandoned step itself
                checked += 1
    assert checked > 10


def read_dir(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_write_demo_files_and_manifest(tmp_path: Path) -> None:
    paths = write_demo(tmp_path, seed=5, **SMALL)
    assert set(paths) == set(demo.SPLITS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{s}.jsonl" for s in demo.SPLITS] + ["manifest.json"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["generator_version"] == demo.GENERATOR_VERSION
    assert manifest["seed"] == 5
    assert manifest["kwargs"] == {**SMALL, "math_fraction": 0.5}
    assert manifest["counts"]["eval_math"] == {"math": {str(k): 2 for k in demo.LEVELS}}
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert rows == generate_demo(seed=5, **SMALL)["train"]


def test_interrupted_write_leaves_no_temp_files_and_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_demo(tmp_path, **SMALL)
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # interrupted in the middle of the set
        real_replace(src, dst)

    monkeypatch.setattr(demo.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        write_demo(tmp_path, seed=9, **SMALL)
    names = [p.name for p in tmp_path.iterdir()]
    assert not [n for n in names if n.endswith(".tmp")]
    assert "manifest.json" not in names  # the half-replaced set is not advertised as complete
    monkeypatch.setattr(demo.os, "replace", real_replace)
    assert ensure_demo(tmp_path, seed=9, **SMALL)["train"].exists()  # and it heals


def test_ensure_demo_caches_and_regenerates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = ensure_demo(tmp_path, seed=1, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    content = read_dir(tmp_path)

    def must_not_generate(**_: Any) -> None:
        raise AssertionError("regenerated although the cache matches")

    with monkeypatch.context() as patch:
        patch.setattr(demo, "generate_demo", must_not_generate)
        assert ensure_demo(tmp_path, seed=1, **SMALL) == paths
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before

    ensure_demo(tmp_path, seed=1, **{**SMALL, "n_train": 50})  # changed kwargs
    assert sum(1 for _ in paths["train"].open()) == 50
    ensure_demo(tmp_path, seed=2, **SMALL)  # changed seed
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 2

    ensure_demo(tmp_path, seed=1, **SMALL)
    assert read_dir(tmp_path) == content  # regenerating gives the same bytes
    monkeypatch.setattr(demo, "GENERATOR_VERSION", demo.GENERATOR_VERSION + 1)
    ensure_demo(tmp_path, seed=1, **SMALL)
    assert json.loads((tmp_path / "manifest.json").read_text())["generator_version"] == demo.GENERATOR_VERSION


def test_ensure_demo_detects_tampered_files(tmp_path: Path) -> None:
    paths = ensure_demo(tmp_path, **SMALL)
    good = paths["pool"].read_bytes()
    paths["pool"].write_bytes(good[: len(good) // 2])  # e.g. a copy that was cut short
    ensure_demo(tmp_path, **SMALL)
    assert paths["pool"].read_bytes() == good


def test_ensure_demo_rejects_unknown_parameters(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ensure_demo(tmp_path, n_trian=5)


def test_concurrent_callers_generate_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counter()
    real = demo.generate_demo

    def counting(**kwargs: Any) -> dict[str, list[dict]]:
        calls["n"] += 1
        return real(**kwargs)

    monkeypatch.setattr(demo, "generate_demo", counting)
    results: list[dict[str, Path]] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_demo(tmp_path, **SMALL))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls["n"] == 1
    assert len(results) == 3 and all(r == results[0] for r in results)
