"""Behaviour tagging during attribution: whole trace once, cached, mapped to scored sentences by offsets."""

import json

import pytest

from infra_pl.data.behaviours import RuleTagger
from infra_pl.data.sentences import split_sentences
from infra_pl.data.tagging import TagCache, TaggedTrace, resolve_tagger, sentence_labels, tag_examples

# No stored labels: what every real dataset looks like. "Alternatively" before the answer is method
# choice; after the answer is reached it is exploration, which only a whole-trace tagger can tell.
TRACE = (
    "<|begin_of_thought|>\n\nAlternatively, I could list the pairs. First, I'll add the ones: 3 + 4 = 7. "
    "Let me verify: 7 - 4 = 3, which matches. So the answer is 7. Alternatively, count up from 4 by three."
    "\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{7}\n\n<|end_of_solution|>"
)
EXAMPLE = {"id": "x", "answer": "7", "messages": [{"role": "user", "content": "3+4?"}, {"role": "assistant", "content": TRACE}]}


def _labels_by_text(trace: TaggedTrace, text: str) -> dict[str, list[str]]:
    sentences = [s for s in split_sentences(text) if s.kind != "marker"]
    return {s.text: labels for s, labels in zip(sentences, sentence_labels(trace, sentences))}


def test_whole_trace_tagging_gives_sentence_labels_without_stored_ones():
    [trace] = tag_examples([EXAMPLE], resolve_tagger("rules"))
    labels = _labels_by_text(trace, TRACE)
    assert "exploration" in labels["Alternatively, count up from 4 by three."]
    assert "exploration" not in labels["Alternatively, I could list the pairs."]  # before the answer: no
    assert "verification" in labels["Let me verify: 7 - 4 = 3, which matches."]
    assert "subgoal_setting" in labels["First, I'll add the ones: 3 + 4 = 7."]
    assert trace.counts()["exploration"] == 1


def test_labels_map_by_offsets_to_differently_split_sentences():
    [trace] = tag_examples([EXAMPLE], resolve_tagger("rules"))
    sentences = split_sentences(TRACE)
    verify = next(s for s in sentences if s.text.startswith("Let me verify"))
    answer = next(s for s in sentences if s.text.startswith("So the answer"))
    from infra_pl.data.sentences import Sentence

    merged = Sentence(verify.start, answer.end, TRACE[verify.start : answer.end], "text")
    assert sentence_labels(trace, [merged]) == [sorted(set(_labels_by_text(trace, TRACE)[verify.text]) | set(_labels_by_text(trace, TRACE)[answer.text]))]


class CountingTagger(RuleTagger):
    calls = 0

    def tag(self, text, answer=None):
        CountingTagger.calls += 1
        return super().tag(text, answer)


def test_cache_is_reused_resumed_and_invalidated_by_rule_changes(tmp_path):
    cache = tmp_path / "tags.jsonl"
    tagger = CountingTagger()
    examples = [EXAMPLE, {**EXAMPLE, "id": "y", "messages": [EXAMPLE["messages"][0], {"role": "assistant", "content": TRACE + " "}]}]
    first = tag_examples(examples, tagger, cache)
    assert CountingTagger.calls == 2 and len(cache.read_text().splitlines()) == 2
    assert tag_examples(examples, tagger, cache) == first and CountingTagger.calls == 2  # all from the cache
    # An interrupted write leaves a broken last line: that trace alone is tagged again.
    lines = cache.read_text().splitlines()
    cache.write_text(lines[0] + "\n" + lines[1][:10] + "\n")
    assert tag_examples(examples, tagger, cache) == first and CountingTagger.calls == 3
    # Edited rules are another tagger: nothing stale is served.
    rules = {k: tuple(v) for k, v in tagger.rules.items()}
    rules["verification"] = rules["verification"][1:]
    tag_examples(examples, CountingTagger(rules=rules), cache)
    assert CountingTagger.calls == 5
    assert all(json.loads(line)["key"] for line in cache.read_text().splitlines() if line.strip().startswith("{\"key\": \"") and line.endswith("]]}"))


def test_resolve_tagger_refuses_unknown_names():
    assert resolve_tagger("none") is None and resolve_tagger(None) is None
    with pytest.raises(ValueError, match="rules"):
        resolve_tagger("rulez")
    with pytest.raises(TypeError, match="tag"):
        resolve_tagger(object())
    assert TagCache(None, resolve_tagger("rules")).get("x", None) is None


def test_influence_scores_no_longer_swallows_a_missing_tagger_import():
    """The old code imported a function that does not exist and returned no labels on ImportError."""
    import inspect

    import callbacks.influence_scores as module

    source = inspect.getsource(module)
    assert "except ImportError" not in source and "tag_sentence(" not in source


def test_a_yaml_style_tagger_mapping_is_instantiated():
    from infra_pl.data.llm_judge import LLMJudgeTagger

    judge = resolve_tagger({"class_path": "infra_pl.data.llm_judge.LLMJudgeTagger",
                            "init_args": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None}})
    assert isinstance(judge, LLMJudgeTagger) and judge.name == "llm_judge:m"
    with pytest.raises(ValueError, match="cannot be imported"):
        resolve_tagger({"class_path": "infra_pl.nope.Tagger"})
