"""The "w/o exploration" ablation (paper Appendix D, Table 2 right): cut post-answer exploration.

The paper asks GPT-4o to truncate "any post-correct-answer exploration" from BS-17k traces. This
is the offline, deterministic counterpart built on the rule tagger: every sentence tagged
``exploration`` (only possible after the answer is reached) is removed, and with
``scope="episode"`` so is the alternative derivation that follows it, up to the next sentence
that does something else (a check, a correction, a plan, a restated answer) or the end of the
thought. The edited examples get new content ids, so attribution runs on the ablated data never
mix their scores with the original examples'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from infra_pl.data.behaviours import RuleTagger, default_tagger
from infra_pl.data.schema import BEHAVIOURS, content_id
from infra_pl.data.sentences import Sentence, remove_span, split_sentences
from infra_pl.data.traces import split_trace

SCOPES = ("sentence", "episode")


@dataclass
class ExplorationCut:
    """Result of :func:`remove_exploration` over a dataset."""

    examples: list[dict[str, Any]]
    removed_sentences: int = 0
    changed_examples: int = 0
    merged: int = 0  # examples dropped because, once cut, they equal an example already kept
    id_map: dict[str, str] = field(default_factory=dict)  # old id -> new id, for changed examples

    def describe(self) -> str:
        merged = f"; {self.merged} became duplicates of other examples and were dropped" if self.merged else ""
        return (
            f"removed {self.removed_sentences} exploration sentence(s) from {self.changed_examples} "
            f"example(s), {len(self.examples)} example(s) kept{merged}"
        )


def exploration_spans(
    text: str, answer: str | None = None, tagger: RuleTagger | None = None, scope: str = "episode"
) -> list[int]:
    """Indices (into ``split_sentences(text)``) of the sentences the ablation removes."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    tagger = tagger or default_tagger()
    tagged = tagger.tag(text, answer)
    thought = split_trace(text).thought
    removed: list[int] = []
    in_episode = False
    for i, (sentence, found) in enumerate(tagged):
        inside = sentence.kind != "marker" and (
            thought is None or (sentence.start >= thought[0] and sentence.end <= thought[1])
        )
        if not inside:
            in_episode = False
            continue
        if "exploration" in found:
            removed.append(i)
            in_episode = scope == "episode"
        elif in_episode and not found and not tagger.matches("answer_reached", sentence.text):
            removed.append(i)  # the alternative derivation continues
        else:
            in_episode = False
    return removed


def strip_exploration(
    text: str, answer: str | None = None, tagger: RuleTagger | None = None, scope: str = "episode"
) -> tuple[str, list[Sentence]]:
    """``text`` without its exploration sentences, and the sentences removed (in order)."""
    sentences = split_sentences(text)
    indices = exploration_spans(text, answer, tagger, scope)
    for i in reversed(indices):  # from the end, so earlier offsets stay valid
        text = remove_span(text, sentences[i])
    return text, [sentences[i] for i in indices]


def remove_exploration(
    examples: Sequence[Mapping[str, Any]], tagger: RuleTagger | None = None, scope: str = "episode"
) -> ExplorationCut:
    """Copies of ``examples`` with exploration cut from the last assistant turn.

    Changed examples get a new ``id`` (content hash) and ``parent_id`` (the original id);
    ``behaviours`` is recounted and demo ``sentence_labels`` are kept aligned. Two traces that
    differed only in their exploration become the same example: the later one is dropped
    (``merged``), because duplicate ids would break the joins of attribution scores.
    """
    tagger = tagger or default_tagger()
    cut = ExplorationCut(examples=[])
    kept_ids: set[str] = {e["id"] for e in examples if e.get("id")}
    for example in examples:
        new = dict(example)
        messages = [dict(m) for m in example["messages"]]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        original = messages[last]["content"]
        indices = exploration_spans(original, example.get("answer"), tagger, scope)
        if not indices:
            cut.examples.append(new)
            continue
        stripped, _ = strip_exploration(original, example.get("answer"), tagger, scope)
        messages[last]["content"] = stripped
        new["messages"] = messages
        source = example.get("source") or "local"
        old_id = example.get("id") or content_id(example["messages"], example["domain"], source)
        new["parent_id"] = old_id
        new["id"] = content_id(messages, example["domain"], source)
        labels = example.get("sentence_labels")
        if labels is not None:
            gone = set(indices)
            kept = [label for i, label in enumerate(labels) if i not in gone]
            if [s.text for s in split_sentences(stripped)] == [label["text"] for label in kept]:
                new["sentence_labels"] = kept
                new["behaviours"] = {b: sum(b in label["behaviours"] for label in kept) for b in BEHAVIOURS}
            else:
                new.pop("sentence_labels")
                new["behaviours"] = tagger.count(stripped, example.get("answer"))
        else:
            new["behaviours"] = tagger.count(stripped, example.get("answer"))
        cut.removed_sentences += len(indices)
        cut.changed_examples += 1
        cut.id_map[old_id] = new["id"]
        if new["id"] in kept_ids:
            cut.merged += 1
            continue
        kept_ids.add(new["id"])
        cut.examples.append(new)
    return cut
