"""Rule-based behaviour tagging (paper §4.3, Appendix E) and the exploration-truncation ablation (Appendix D)."""

import pytest

from infra_pl.data.behaviours import RULES, RuleTagger, annotate_behaviours, count_behaviours, evaluate_tagger, tag_sentences
from infra_pl.data.demo import generate_demo
from infra_pl.data.exploration import remove_exploration, strip_exploration
from infra_pl.data.schema import BEHAVIOURS


@pytest.fixture(scope="module")
def demo_train():
    # The train split does not depend on n_pool (it is generated first), so skipping the pool
    # gives the same 2,000 records as generate_demo(seed=0, n_train=2000), faster.
    return generate_demo(seed=0, n_train=2000, n_pool=0)["train"]


def test_precision_and_recall_on_the_demo_labels(demo_train):
    metrics = evaluate_tagger(demo_train)
    print("\nrule tagger vs demo sentence_labels (2,000 traces):")
    for behaviour in BEHAVIOURS:
        print(f"  {behaviour:18s} {metrics[behaviour]}")
    for behaviour in BEHAVIOURS:
        assert metrics[behaviour].tp > 100, behaviour  # every behaviour is actually present
        assert metrics[behaviour].precision >= 0.9 and metrics[behaviour].recall >= 0.9, (behaviour, str(metrics[behaviour]))


def _tags(text):
    return [(s.text, found) for s, found in tag_sentences(text)]


# Appendix E of the paper: the example phrases of each behaviour prompt (Figures 10 and 11) and
# the truncation example of Appendix D / Figure 9.
APPENDIX_E = {
    "exploration": [
        "But let me just think again if there's another way to approach this.",
        "Another way to look at this is...",
        "That's one way to get the result. Now let's see if we can also derive it using geometry.",
        "Alternatively, maybe there's a different way to approach the problem?",
    ],
    "verification": [
        "Let's check our answer by substituting $x = 3$ back into the original equation.",
        "To verify this is correct, I'll differentiate the antiderivative and confirm it matches the original function.",
        "Let's test our formula with a simple case: when $n = 1$, we get $f(1) = 2$, which matches our expected result.",
        "To ensure this solution is valid, I'll check if it satisfies all the given constraints.",
    ],
    "backtracking": [
        "Let me try again",
        "Wait",
        "I made a mistake",
        "we need to try a different sequence of operations",
        "I started with the wrong formula. Let's use integration by parts instead.",
        "This approach leads to a contradiction. Going back to the original equation...",
        "I see the error in my calculation. Let's recalculate using...",
        "This algebraic manipulation isn't simplifying as expected. Let's try factoring differently.",
    ],
    "backward_chaining": [
        "To solve this equation, let's start with what we want to prove: $x = 4$. Working backward, if $x = 4$, "
        "then $x^2 - 5x + 4 = 0$ must be true. Let's verify this.",
        "If we want to find a function whose derivative is $2x + 3$, let's start with the desired result and work "
        "backward. The derivative of $x^2 + 3x + C$ would give us $2x + 3$.",
        "To prove this triangle is a right triangle, I'll start by assuming the Pythagorean theorem holds "
        "($c^2 = a^2 + b^2$) and check if our side lengths satisfy this condition.",
        "In this optimization problem, we know the maximum value occurs when the derivative equals zero. If we set "
        "$f'(x) = 0$ and solve for $x$, we can find our critical points.",
        "To determine the initial velocity, I know the ball reaches a height of 20 meters. Working backward from this "
        "final state using the kinematic equation $h = vt - 0.5gt^2$, I can solve for the initial velocity $v$.",
    ],
}


@pytest.mark.parametrize("behaviour, text", [(b, t) for b, texts in APPENDIX_E.items() for t in texts])
def test_appendix_e_examples(behaviour, text):
    tagged = _tags(text)
    assert any(behaviour in found for _, found in tagged), tagged
    others = {b for _, found in tagged for b in found} - {behaviour, "verification"}
    assert not others, tagged  # no other behaviour invented (a "Let's verify this." may follow)


def test_single_sentence_examples_are_tagged_exactly():
    assert _tags("Alternatively, maybe there's a different way to approach the problem?") == [
        ("Alternatively, maybe there's a different way to approach the problem?", {"exploration"})
    ]
    assert _tags("That's one way to get the result. Now let's see if we can also derive it using geometry.") == [
        ("That's one way to get the result.", set()),
        ("Now let's see if we can also derive it using geometry.", {"exploration"}),
    ]


# The long CoT the paper shows in Figure 7 (its Figure 6 example trace is an image), with the
# behaviours its sentences show: planning the approach, "Wait" corrections, a verification.
FIGURE_7_MATH = (
    "Okay, so I need to find the smallest three-digit palindrome that when multiplied by 101 doesn't result in a "
    "five-digit palindrome. Hmm, let's start by understanding the problem step by step. First, a palindrome is a "
    "number that reads the same forwards and backwards. So, first, maybe I should figure out what happens when you "
    "multiply a three-digit palindrome by 101. Let's take an example. Let's take 101. Multiply by 101: 101 * 101. "
    "101 * 100 is 10100, plus 101 * 1 is 101, so total is 10201. Is 10201 a palindrome? Yes, because reading "
    "forwards and backwards (...). Wait, let's think about how multiplying by 101 works. Multiplying by 101 is like "
    "multiplying by 100 and adding the original number. (...) Wait, no, actually, to add ABA00 and ABA, they need "
    "to be aligned by place value. (...) So position 4 would be B+1. (...) But wait, let's verify this. (...)"
)
FIGURE_7_CODE = (
    "Okay, I need to solve this problem where I have to partition an array into two contiguous sub arrays such that "
    "every element in the left is less than or equal to every element in the right. Hmm, Let's think. Wait, but "
    "checking all possible partitions and their max and min might be time-consuming for large arrays. (...) "
    "Correct. So this approach works. Now, space-wise, for n = 3e4, we have two arrays of size n each. "
    "So the code is correct."
)


def test_figure_7_traces():
    math = dict(_tags(FIGURE_7_MATH))
    assert math["Hmm, let's start by understanding the problem step by step."] == {"subgoal_setting"}
    assert math["So, first, maybe I should figure out what happens when you multiply a three-digit palindrome by 101."] == {"subgoal_setting"}
    assert math["Wait, let's think about how multiplying by 101 works."] == {"backtracking"}
    assert math["Wait, no, actually, to add ABA00 and ABA, they need to be aligned by place value."] == {"backtracking"}
    assert math["But wait, let's verify this."] == {"verification"}  # a "wait" that checks is not backtracking
    assert math["First, a palindrome is a number that reads the same forwards and backwards."] == set()
    assert math["101 * 100 is 10100, plus 101 * 1 is 101, so total is 10201."] == set()
    assert count_behaviours(FIGURE_7_MATH) == {
        "verification": 1, "exploration": 0, "backtracking": 2, "subgoal_setting": 2, "backward_chaining": 0,
    }
    code = dict(_tags(FIGURE_7_CODE))
    assert code["Wait, but checking all possible partitions and their max and min might be time-consuming for large arrays."] == {"backtracking"}
    assert code["Correct."] == {"verification"} and code["So the code is correct."] == {"verification"}
    assert code["Now, space-wise, for n = 3e4, we have two arrays of size n each."] == set()


THOUGHT = (
    "<|begin_of_thought|>\n\nI need the sum of 5 and 7. Alternatively, I could count up one by one. 5 + 7 = 12. "
    "Another way: 7 + 5 = 12. Addition lets the order of the terms change.\n\nLet me check: 12 - 7 = 5, correct."
    "\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\nThe answer is \\boxed{12}. Another way is counting.\n\n<|end_of_solution|>"
)


def test_exploration_counts_only_after_the_answer():
    tags = dict(_tags(THOUGHT))
    assert tags["Alternatively, I could count up one by one."] == set()  # choosing a method, answer not reached
    assert tags["Another way: 7 + 5 = 12."] == {"exploration"}  # after "5 + 7 = 12", the solution's answer
    assert tags["Another way is counting."] == set()  # the solution section is not the reasoning
    assert tags["Let me check: 12 - 7 = 5, correct."] == {"verification"}
    # a one-digit answer is not matched by value (it appears in intermediate steps); an answer
    # phrase marks the point instead
    short = "I need 3 + 4. Alternatively, count up. 3 + 4 = 7. So the answer is 7. Another way: 4 + 3 = 7. Done."
    assert {t: f for t, f in _tags(short)} == {
        "I need 3 + 4.": set(), "Alternatively, count up.": set(), "3 + 4 = 7.": set(),
        "So the answer is 7.": set(), "Another way: 4 + 3 = 7.": {"exploration"}, "Done.": set(),
    }


def test_exploration_cut_removes_the_episode_only():
    text, removed = strip_exploration(THOUGHT)
    assert [s.text for s in removed] == ["Another way: 7 + 5 = 12.", "Addition lets the order of the terms change."]
    assert "Alternatively, I could count up" in text and "Let me check" in text and "Another way: 7" not in text
    text, removed = strip_exploration(THOUGHT, scope="sentence")
    assert [s.text for s in removed] == ["Another way: 7 + 5 = 12."]


def test_remove_exploration_on_the_demo(demo_train):
    records = demo_train[:400]
    labelled = sum(r["behaviours"]["exploration"] for r in records)
    cut = remove_exploration(records)
    assert cut.removed_sentences == labelled and cut.changed_examples == labelled > 0
    assert sum(e["behaviours"]["exploration"] for e in cut.examples) == 0
    changed = [e for e in cut.examples if "parent_id" in e]
    assert len(changed) == labelled and all(e["id"] != e["parent_id"] for e in changed)
    assert cut.id_map == {e["parent_id"]: e["id"] for e in changed}
    # the demo's ground-truth labels stay aligned with the shortened traces
    assert evaluate_tagger(cut.examples)["verification"].recall == 1.0
    before = {b: sum(r["behaviours"][b] for r in records) for b in BEHAVIOURS if b != "exploration"}
    after = {b: sum(e["behaviours"][b] for e in cut.examples) for b in BEHAVIOURS if b != "exploration"}
    assert before == after


def test_rules_are_validated():
    with pytest.raises(ValueError, match="missing entries for \\['answer_reached'\\]"):
        RuleTagger(rules={k: v for k, v in RULES.items() if k != "answer_reached"})
    with pytest.raises(ValueError, match="not a valid regex"):
        RuleTagger(rules={**RULES, "verification": ("(unclosed",)})
    custom = RuleTagger(rules={**RULES, "verification": (r"\bsanity\b",)})
    assert custom.count("A sanity pass.")["verification"] == 1


def test_annotate_behaviours_matches_count_and_parallel_is_identical(demo_train):
    records = demo_train[:60]
    serial = annotate_behaviours(records)
    parallel = annotate_behaviours(records, workers=2)
    assert [e["behaviours"] for e in serial] == [e["behaviours"] for e in parallel] == [r["behaviours"] for r in records]


def test_traces_that_differ_only_by_exploration_merge():
    from infra_pl.data.schema import validate_example

    def example(thought):
        trace = f"<|begin_of_thought|>\n{thought}\n<|end_of_thought|>\n<|begin_of_solution|>\n\\boxed{{7}}\n<|end_of_solution|>"
        return validate_example({"domain": "math", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": trace}]})

    plain, explored = example("3 + 4 = 7. So the answer is 7."), example("3 + 4 = 7. So the answer is 7. Alternatively, 4 + 3 = 7.")
    cut = remove_exploration([plain, explored])
    assert [e["id"] for e in cut.examples] == [plain["id"]] and cut.merged == 1
    assert "became duplicates" in cut.describe()


# ------------------------------------------------------------------ the hand-labelled evaluation set
import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from infra_pl.data.behaviours import (  # noqa: E402
    ACCURACY_PATH,
    BehaviourMetrics,
    default_tagger,
    describe_tagger_accuracy,
    load_labelled_traces,
    measure_tagger_accuracy,
    tagger_accuracy,
)
from infra_pl.data.sentences import split_sentences  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EVAL_DIR = ROOT / "tests" / "fixtures" / "behaviours"
EVAL_SET = EVAL_DIR / "traces.jsonl"


def _load_script(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluation_set_is_built_from_its_sources_and_usable():
    build = _load_script(EVAL_DIR / "build.py", "behaviour_set_build")
    assert EVAL_SET.read_text(encoding="utf-8") == build.dumps(build.build()), "run python tests/fixtures/behaviours/build.py"
    records = load_labelled_traces(EVAL_SET)  # raises if a record's labels do not align with split_sentences
    assert len(records) >= 40
    for split in ("tune", "dev", "heldout"):
        part = [r for r in records if r["split"] == split]
        assert {r["domain"] for r in part} == {"math", "code"}
        positives = {b: sum(b in label["behaviours"] for r in part for label in r["sentence_labels"]) for b in BEHAVIOURS}
        assert min(positives.values()) >= 10, (split, positives)  # enough positives for a meaningful F1
    for record in records:  # Bespoke-Stratos rows
        user, assistant = record["conversations"]
        assert user["from"] == "user" and assistant["from"] == "assistant" and record["system"]
        assert assistant["value"].startswith("<|begin_of_thought|>\n\n") and assistant["value"].endswith("<|end_of_solution|>")


def test_stored_accuracy_matches_the_current_rules():
    stored = json.loads(ACCURACY_PATH.read_text(encoding="utf-8"))
    measured = measure_tagger_accuracy(EVAL_SET)
    assert stored == measured, "the rules or the set changed: rerun python benchmarks/bench_tagger.py --write"
    assert tagger_accuracy()["stale"] is False
    assert set(stored["splits"]) == {"tune", "dev", "heldout"} and stored["reported_split"] == "heldout"
    for metrics in stored["splits"]["heldout"]["behaviours"].values():
        assert set(metrics) == {"precision", "recall", "f1", "tp", "fp", "fn", "support"}


def test_bench_tagger_prints_every_split(capsys):
    bench = _load_script(ROOT / "benchmarks" / "bench_tagger.py", "bench_tagger")
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    for split in ("tune", "dev", "heldout"):
        assert f"== {split} split" in out
    assert "backward_chaining" in out and "F1" in out


def test_f1_and_accuracy_description(monkeypatch):
    m = BehaviourMetrics(tp=2, fp=1, fn=1)
    assert m.f1 == pytest.approx(2 / 3) and m.support == 3 and "F1=0.667" in str(m)
    assert BehaviourMetrics().f1 == 1.0  # nothing to find, nothing found
    text = describe_tagger_accuracy()
    assert "rule tagger" in text and "| verification |" in text and "held-out" in text
    stored = tagger_accuracy()
    weak = [b for b, m in stored["splits"]["heldout"]["behaviours"].items() if m["f1"] < 0.8]
    assert all(b in text for b in weak) and ("below 0.8" in text) == bool(weak)
    both = describe_tagger_accuracy("judge", kappa={b: 0.5 for b in BEHAVIOURS}, judge_model="some-instruct-model")
    assert "LLM judge (some-instruct-model" in both and "kappa rules vs judge" in both and "+0.50" in both
    stale = describe_tagger_accuracy(accuracy={**stored, "rules_fingerprint": "0" * 16})
    assert "WARNING: the rules changed" in stale
    with pytest.raises(ValueError, match="tagger must be"):
        describe_tagger_accuracy("regex")


# The hard cases named in issue 24, in fresh wording (regression tests of the rules, not of the set).
def _thought(body, solution="The answer is $\\boxed{3}$."):
    return f"<|begin_of_thought|>\n\n{body}\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>"


def _tagged(text, answer=None):
    return {s.text: found for s, found in default_tagger().tag(text, answer)}


def test_one_character_answer_is_reached_and_exploration_after_it_counts():
    text = _thought("First I add: 1 + 2 = 3. Then 3 + 0 = 3 again. So $x = 3$. Another way to see it: count three dots.")
    tagger = default_tagger()
    reached = tagger.answer_reached(text, "3")
    assert split_sentences(text)[reached].text == "So $x = 3$."  # not the intermediate "1 + 2 = 3"
    tags = _tagged(text, "3")
    assert tags["Another way to see it: count three dots."] == {"exploration"}
    before = _thought("Another way to start: count up. So $x = 3$.")
    assert _tagged(before, "3")["Another way to start: count up."] == set()  # method choice before the answer


def test_issue_hard_cases_in_fresh_wording():
    code = _thought(
        "So the task splits in two: read the numbers, then add them. Next comes the input handling.\n\n"
        "```python\ndef add(a, b):\n    return a + b\n```\n\n"
        "For the input [1, 2] it returns 3, the expected output. Wait, what if both numbers are negative? "
        "Then -1 + -2 = -3, which is right.",
        "```python\ndef add(a, b):\n    return a + b\n```",
    )
    tags = _tagged(code)
    assert tags["So the task splits in two: read the numbers, then add them."] == {"subgoal_setting"}
    assert tags["Next comes the input handling."] == {"subgoal_setting"}
    assert tags["For the input [1, 2] it returns 3, the expected output."] == {"verification"}
    assert tags["Wait, what if both numbers are negative?"] == {"verification"}  # an edge case, not backtracking
    math = _thought(
        "To get f(6) I need f(5) and f(4), which in turn need the terms below them. "
        "A recursive search over all subsets is far too slow for n = 40. So scrap the recursion. "
        "Plugging $x = 2$ into both sides gives 5 and 5."
    )
    tags = _tagged(math)
    assert tags["To get f(6) I need f(5) and f(4), which in turn need the terms below them."] == {"backward_chaining"}
    assert "backtracking" in tags["So scrap the recursion."]
    assert tags["Plugging $x = 2$ into both sides gives 5 and 5."] == {"verification"}
