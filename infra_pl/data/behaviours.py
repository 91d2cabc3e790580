"""Rule-based tagging of the five cognitive behaviours of paper §4.3 / Appendix E, per sentence.

Why rules (and not only the paper's LLM classifier, :class:`~infra_pl.data.llm_judge.LLMJudgeTagger`):
sequence-level attribution (Eq. 7) needs *which sentence* shows a behaviour, for every trace of
the training set, offline, deterministically and without a 32B judge model. The phrases are the discourse markers the paper itself
highlights ("Wait", "Verify", "First", "Alternatively", §4.4) and the examples of its Appendix E
prompts. All of them live in :data:`RULES`, the one place to edit.

Definitions (paper §4.3, following Gandhi et al. 2025):

* ``verification``: the writer checks their own work ("Let me check", "To verify", "which matches").
* ``exploration``: searching for another approach *after the answer has been reached*; the same
  phrase before the answer is just choosing a method, so it is not counted (see below).
* ``backtracking``: abandoning a path ("I made a mistake", "Let me try again", a leading "Wait"
  unless the sentence is a verification, as in "But wait, let's verify this.").
* ``subgoal_setting``: announcing a plan or the next step ("First, I ...", "step by step").
* ``backward_chaining``: reasoning from the goal to the inputs ("Working backward", "undo each step").

When is the answer reached? At the first sentence of the thought that (a) states a result with an
answer phrase (``\\boxed{}``, "the answer is", "So the code would be", "That's one way to get the
result"), (b) states the final answer's value ("= 42" / "is 42"), the value being taken from
``answer`` or the solution section, or the last "So ... = X" of the thought, or (c) is a complete
program (a fenced block defining a function or class). Independently, a
trace that *ends* with a run of only verification / alternative-approach sentences has reached
its answer before that run (this covers code traces whose program is only in the solution).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from infra_pl.data.llm_judge import LLMJudgeTagger  # the paper's LLM classifier, offered next to the rules
from infra_pl.data.schema import BEHAVIOURS
from infra_pl.data.sentences import Sentence, split_sentences
from infra_pl.data.traces import split_trace

__all__ = [
    "ACCURACY_PATH",
    "RULES",
    "BehaviourMetrics",
    "LLMJudgeTagger",
    "RuleTagger",
    "annotate_behaviours",
    "assistant_text",
    "check_alignment",
    "count_behaviours",
    "default_tagger",
    "evaluate_tagger",
    "load_labelled_traces",
    "measure_tagger_accuracy",
    "rules_fingerprint",
    "score_labels",
    "tag_sentences",
    "tagger_accuracy",
]

_LEAD = r"^(?:(?:so|ok(?:ay)?|hmm+|well|alright|and|but|oh|ah|now)\b[\s,]*)*"  # filler before a sentence opener
_SELF = r"(?:let(?:'s| me| us)|i(?:'ll| will)?|we(?:'ll| will)?)"  # the writer as the subject

# ONE editable place: behaviour -> regular expressions (case-insensitive, searched in a sentence).
# Two auxiliary entries: "backtracking_weak" (backtracking unless the sentence is a verification)
# and "answer_reached" (sentences after which alternative approaches count as exploration).
RULES: dict[str, tuple[str, ...]] = {
    "verification": (
        rf"\b{_SELF} (?:just )?(?:double[- ])?(?:check|verify|confirm|test)\b",
        r"\bto (?:double[- ])?(?:verify|check|confirm|ensure)\b",
        r"\bdouble[- ]check",
        r"\bsanity check\b",
        r"\bverif(?:y|ied|ies|ying|ication)\b",
        r"\bwhich (?:matches|checks out|is consistent|confirms)\b",
        r"\bmatch(?:es)? (?:the|our|my) (?:expected|original|given|known)\b",
        r"\bchecks out\b",
        r"\b(?:substitut|plugg?)\w* [^.]*\bback\b",
        r"^(?:yes,?\s*)?(?:that(?:'s| is) |this is |it(?:'s| is) )?correct[.!]?$",
        r"\b(?:the|this|that|my|our) (?:code|answer|result|solution|approach|formula) (?:is|seems|looks) (?:correct|right)\b",
    ),
    "exploration": (
        rf"{_LEAD}alternatively\b",
        r"\banother (?:way|approach|method|solution|strategy|idea|perspective|angle)\b",
        r"\b(?:different|alternative|other) (?:way|approach|method|solution|strategy|perspective|angle)s?\b",
        r"\bcan (?:also|alternatively) (?:derive|solve|compute|get|obtain|show|prove|write|do|approach|find)\b",
        r"\b(?:one more|a second) (?:way|approach|method)\b",
    ),
    "backtracking": (
        r"\b(?:i|we) (?:made|make|have made|'ve made) (?:a |an )?(?:mistake|error)\b",
        r"\b(?:that|this|it)(?:'s| is| was) (?:wrong|incorrect|not right|a mistake)\b",
        r"\bwrong (?:formula|approach|method|assumption|answer|sign|value|step|equation)\b",
        r"\bmis(?:read|calculated|computed|counted|understood|applied|took)\b",
        r"\b(?:try|do (?:it|this)|start) (?:again|over)\b",
        r"\b(?:redo|recalculate|recompute)\b",
        r"\b(?:go|going|went) back to\b",
        r"\b(?:see|found|spot(?:ted)?|notice) (?:the|an|my) (?:error|mistake)\b",
        r"\berror in (?:my|the|our) (?:calculation|reasoning|logic|work|derivation)\b",
        r"\bleads? to a contradiction\b",
        r"\b(?:doesn't|does not|won't|will not|didn't|did not|isn't|is not) (?:work|working|simplifying|right|correct)\b",
        r"\btry (?:a |an )?(?:different|another|new) (?:sequence|approach|method|way|strategy|formula)\b",
        rf"\b{_SELF} (?:use|try) [^.]*\binstead\b",
        r"\btry [^.]*\bdifferently\b",
        r"\bscratch that\b",
        r"\bactually,? no\b",
        r"\bon second thought\b",
    ),
    "backtracking_weak": (rf"{_LEAD}wait\b",),
    "subgoal_setting": (
        _LEAD
        + r"(?:first(?:ly)?|next|then|finally|second(?:ly)?|third(?:ly)?|after that)\b[\s,]*(?:(?:maybe|perhaps|probably)\s+)?"
        + rf"{_SELF}\b(?!\s*(?:get|got|have|had|obtain|see|saw|notice|realize|know|found)\b)",
        r"^now,?\s+(?:i|we|let(?:'s| me| us))\b(?!\s*(?:get|got|have|had|obtain|see|saw|notice|realize|know|found)\b)",
        r"\b(?:break|split|divide|decompose) (?:this|it|the (?:problem|task))(?: down)? into\b",
        r"\bstep[- ]by[- ]step\b",
        r"\blet(?:'s| me| us) (?:start|begin) by\b",
        r"\b(?:the|my|our) plan (?:is|will be)\b",
        r"\bsub-?(?:goal|problem|task)s?\b",
        r"\b(?:i|we) (?:need|have|want) to (?:first|start by)\b",
        r"\bin (?:smaller|separate|manageable) (?:steps|parts|pieces)\b",
    ),
    "backward_chaining": (
        r"\bwork(?:ing|ed|s)? backwards?\b",
        r"\bbackwards? from\b",
        r"\bstart(?:ing)? (?:from|with) (?:what (?:we|i) (?:want|need) to (?:prove|show|find|get)"
        r"|the (?:desired|final|target|goal|end|expected) (?:result|state|outcome|value|answer)"
        r"|the (?:result|goal|answer|end|target)\b)",
        r"\bundo (?:each|every|all|the last|the) (?:of the )?steps?\b",
        r"\bin reverse order\b",
        r"\breverse (?:the|each|all) (?:steps|operations)\b",
        r"\bstart(?:ing)? by assuming\b",
        r"\b(?:maximum|minimum|optimum|optimal value)\b[^.]*\b(?:occurs|is (?:achieved|attained|reached|obtained))\s+(?:when|if|at|where)\b",
        r"\bwhat (?:would|must) (?:be|hold) (?:true )?(?:for|if|so that)\b",
    ),
    "answer_reached": (
        r"\\boxed\s*\{",
        r"\b(?:the )?(?:final )?answer (?:is|should be|would be)\b",
        r"\bfinal answer\b",
        r"\bso (?:the|our) (?:answer|result|total|number|value) (?:is|should be|would be)\b",
        r"\bthat(?:'s| is) (?:one|a) way to (?:get|find|solve|reach|obtain|derive)\b",
        r"\b(?:we|i) (?:have|'ve) (?:found|solved|got(?:ten)?|obtained) (?:the|it|our)\b",
        r"\b(?:so|thus|hence|therefore),? the (?:code|function|program) (?:would be|is|should be|becomes)\b",
        r"\b(?:the )?(?:final|complete) (?:code|program)\b",
        r"\bputting it all together\b",
    ),
}
_AUXILIARY = ("backtracking_weak", "answer_reached")
_RESULT_RE = re.compile(r"^(?:so|therefore|thus|hence)\b[^=]*=\s*(-?[\w.\\{}/^]+?)[.,;:]?(?:\s|$)", re.IGNORECASE)
_COMPLETE_CODE_RE = re.compile(r"^\s*(?:def|class)\s+\w+", re.MULTILINE)


@dataclass(frozen=True)
class _Compiled:
    """One alternation per rule key: a single regex search per key and sentence (traces are long)."""

    patterns: dict[str, re.Pattern[str]]

    @classmethod
    def from_rules(cls, rules: Mapping[str, Sequence[str]]) -> "_Compiled":
        missing = [key for key in (*BEHAVIOURS, *_AUXILIARY) if key not in rules]
        if missing:
            raise ValueError(f"behaviour rules are missing entries for {missing}")
        unknown = set(rules) - set(BEHAVIOURS) - set(_AUXILIARY)
        if unknown:
            raise ValueError(f"behaviour rules have unknown entries {sorted(unknown)}; known: {BEHAVIOURS + _AUXILIARY}")
        compiled = {}
        for key, patterns in rules.items():
            for pattern in patterns:  # compile one by one first, so an error names its rule
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"behaviour rule for {key!r} is not a valid regex: {pattern!r}: {err}") from None
            joined = "|".join(f"(?:{p})" for p in patterns) or r"(?!x)x"
            compiled[key] = re.compile(joined, re.IGNORECASE)
        return cls(compiled)

    def hit(self, key: str, text: str) -> bool:
        return self.patterns[key].search(text) is not None


@dataclass
class RuleTagger:
    """Sentence-level behaviour tagger driven by :data:`RULES` (or your own rules of the same shape).

    Args:
        rules: behaviour -> regexes, plus ``backtracking_weak`` and ``answer_reached``.
        thought_only: tag only the thought section when the trace has thought markers (the
            solution is a write-up of the result, not the reasoning process).
    """

    rules: Mapping[str, Sequence[str]] = field(default_factory=lambda: RULES)
    thought_only: bool = True

    def __post_init__(self) -> None:
        self._compiled = _Compiled.from_rules(self.rules)

    def tag(self, text: str, answer: str | None = None) -> list[tuple[Sentence, set[str]]]:
        """Every sentence of ``text`` (as :func:`split_sentences` gives them) with its behaviours.

        ``answer`` is the final answer when known (a math example's ``answer``); otherwise it is
        read from the solution section. It only helps to place the point where the answer is
        reached, which gates exploration.
        """
        sentences = split_sentences(text)
        region = self._region(text, sentences)
        tags: list[set[str]] = [set() for _ in sentences]
        candidates: dict[int, bool] = {}
        for i in region:
            sentence = sentences[i]
            if sentence.kind != "text":
                continue
            found = {b for b in BEHAVIOURS if b != "exploration" and self._compiled.hit(b, sentence.text)}
            if "verification" not in found and self._compiled.hit("backtracking_weak", sentence.text):
                found.add("backtracking")
            tags[i] = found
            candidates[i] = self._compiled.hit("exploration", sentence.text)
        start = self._exploration_start(text, sentences, region, tags, candidates, answer)
        for i, is_candidate in candidates.items():
            if is_candidate and i >= start:
                tags[i].add("exploration")
        return list(zip(sentences, tags))

    def count(self, text: str, answer: str | None = None) -> dict[str, int]:
        """Number of sentences showing each behaviour (a sentence may show several)."""
        counts = {b: 0 for b in BEHAVIOURS}
        for _, found in self.tag(text, answer):
            for behaviour in found:
                counts[behaviour] += 1
        return counts

    def matches(self, key: str, text: str) -> bool:
        """Whether a rule of ``key`` (a behaviour, ``backtracking_weak`` or ``answer_reached``) matches."""
        return self._compiled.hit(key, text)

    # ------------------------------------------------------------------ helpers
    def _region(self, text: str, sentences: list[Sentence]) -> list[int]:
        """Indices of the sentences to tag: the thought's, or all when there is no thought."""
        span = split_trace(text).thought if self.thought_only else None
        return [
            i
            for i, s in enumerate(sentences)
            if s.kind != "marker" and (span is None or (s.start >= span[0] and s.end <= span[1]))
        ]

    def _exploration_start(
        self,
        text: str,
        sentences: list[Sentence],
        region: list[int],
        tags: list[set[str]],
        candidates: dict[int, bool],
        answer: str | None,
    ) -> float:
        """First sentence index at which an alternative approach counts as exploration."""
        reached = self._answer_reached(text, sentences, region, answer)
        start = float("inf") if reached is None else reached + 1
        # A trailing run of checks / alternatives: the work was done before it.
        tail = None
        for i in reversed(region):
            s = sentences[i]
            if s.kind == "text" and (candidates.get(i) or tags[i] == {"verification"}):
                tail = i
                continue
            break
        return start if tail is None else min(start, tail)

    def _answer_reached(self, text: str, sentences: list[Sentence], region: list[int], answer: str | None) -> int | None:
        value = answer if answer not in (None, "") else _solution_answer(text)
        if value is None:
            value = self._last_result(sentences, region)
        value_re = _value_pattern(value) if value is not None else None
        for i in region:
            s = sentences[i]
            if s.kind == "code":
                if _COMPLETE_CODE_RE.search(s.text):
                    return i
                continue
            if self._compiled.hit("answer_reached", s.text) or (value_re is not None and value_re.search(s.text)):
                return i
        return None

    @staticmethod
    def _last_result(sentences: list[Sentence], region: list[int]) -> str | None:
        """The value of the last "So ... = X" sentence: the result the writer settled on."""
        for i in reversed(region):
            match = _RESULT_RE.match(sentences[i].text) if sentences[i].kind == "text" else None
            if match:
                return match.group(1)
        return None


def _solution_answer(text: str) -> str | None:
    """The final answer stated in the solution section, if the trace has one."""
    parts = split_trace(text)
    if parts.solution is None:
        return None
    from infra_pl.eval.math_answer import extract_answer

    return extract_answer(text[slice(*parts.solution)])


def _value_pattern(value: str) -> re.Pattern[str] | None:
    """Matches a sentence stating ``value`` as a result: ``= 42``, ``is 42``, ``gives 42``."""
    value = value.strip().strip("$").strip()
    # A one-character answer ("2") shows up in intermediate steps long before it is the answer;
    # such traces rely on answer phrases and the trailing-checks rule instead.
    if len(value) < 2 or len(value) > 40:
        return None
    return re.compile(
        r"(?:=|\bis|\bequals|\bgives?|\bget|\bgot|\bbe)\s*\$?\s*" + re.escape(value) + r"(?!\d)(?!\.\d)",
        re.IGNORECASE,
    )


_DEFAULT: tuple[tuple, RuleTagger] | None = None


def default_tagger() -> RuleTagger:
    """A tagger for the current :data:`RULES`, recompiled if they were edited at run time."""
    global _DEFAULT
    key = tuple((name, tuple(patterns)) for name, patterns in RULES.items())
    if _DEFAULT is None or _DEFAULT[0] != key:
        _DEFAULT = (key, RuleTagger(rules=dict(RULES)))
    return _DEFAULT[1]


def tag_sentences(text: str, answer: str | None = None) -> list[tuple[Sentence, set[str]]]:
    """Sentences of ``text`` with the behaviours each one shows (default :data:`RULES`)."""
    return default_tagger().tag(text, answer)


def count_behaviours(text: str, answer: str | None = None) -> dict[str, int]:
    """Sentence counts per behaviour, in the schema's ``behaviours`` shape."""
    return default_tagger().count(text, answer)


def _count_one(args: tuple[RuleTagger, str, str | None]) -> dict[str, int]:
    tagger, text, answer = args
    return tagger.count(text, answer)


def annotate_behaviours(
    examples: Sequence[Mapping[str, Any]], tagger: RuleTagger | None = None, workers: int = 1
) -> list[dict[str, Any]]:
    """Copies of ``examples`` whose ``behaviours`` are the rule tagger's counts on the last assistant turn.

    Why a dataset-level function (and ``workers``): long-CoT traces take ~0.1 s each, mostly
    sentence splitting, so tagging all of BS-17k at every data load would cost many minutes; call
    this once where behaviour groups are needed (attribution reports), in parallel processes.
    """
    tagger = tagger or default_tagger()
    jobs = [
        (tagger, [m["content"] for m in e["messages"] if m["role"] == "assistant"][-1], e.get("answer"))
        for e in examples
    ]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            counts = list(pool.map(_count_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    else:
        counts = [_count_one(job) for job in jobs]
    return [{**e, "behaviours": c} for e, c in zip(examples, counts)]


@dataclass
class BehaviourMetrics:
    """Sentence-level agreement of a tagger with reference labels for one behaviour."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (1.0 when there is nothing to find and nothing found)."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def support(self) -> int:
        """Number of reference sentences showing the behaviour."""
        return self.tp + self.fn

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "support": self.support,
        }

    def __str__(self) -> str:
        return (
            f"P={self.precision:.3f} R={self.recall:.3f} F1={self.f1:.3f} "
            f"(tp={self.tp} fp={self.fp} fn={self.fn})"
        )


def evaluate_tagger(records: Iterable[Mapping[str, Any]], tagger: Any | None = None) -> dict[str, BehaviourMetrics]:
    """Precision / recall / F1 per behaviour against records carrying ``sentence_labels``.

    Records are the demo's (``messages``) or BS-17k rows (``conversations``, as in the held-out
    set). Labels are aligned with ``split_sentences`` of the last assistant turn; a record whose
    sentences do not line up is an error (the comparison would be meaningless). ``tagger`` is
    anything with the :meth:`RuleTagger.tag` signature (default: the current :data:`RULES`).
    """
    tagger = tagger or default_tagger()

    def predictions() -> Iterable[tuple[Mapping[str, Any], list[set[str]]]]:
        for number, record in enumerate(records, start=1):
            labels = record.get("sentence_labels")
            if labels is None:
                raise ValueError(f"record {number} ({record.get('id', '?')}) has no sentence_labels to evaluate against")
            tagged = tagger.tag(assistant_text(record), record.get("answer"))
            if [s.text for s, _ in tagged] != [label["text"] for label in labels]:
                raise ValueError(f"record {number} ({record.get('id', '?')}): sentence_labels do not align with split_sentences")
            yield record, [found for _, found in tagged]

    return score_labels(predictions())


def score_labels(pairs: Iterable[tuple[Mapping[str, Any], Sequence[Iterable[str]]]]) -> dict[str, BehaviourMetrics]:
    """Precision / recall per behaviour of predicted per-sentence labels against ``sentence_labels``.

    ``pairs`` are ``(record, predicted)`` with one set of behaviours per sentence of
    ``split_sentences(assistant_text(record))``: any tagger's output (rules, the LLM judge).
    """
    metrics = {b: BehaviourMetrics() for b in BEHAVIOURS}
    for number, (record, predicted_all) in enumerate(pairs, start=1):
        labels = record.get("sentence_labels")
        if labels is None:
            raise ValueError(f"record {number} ({record.get('id', '?')}) has no sentence_labels to evaluate against")
        predicted_all = list(predicted_all)
        if len(predicted_all) != len(labels):
            raise ValueError(
                f"record {number} ({record.get('id', '?')}): {len(predicted_all)} predicted sentences "
                f"for {len(labels)} labelled ones"
            )
        for predicted, label in zip(predicted_all, labels):
            predicted, truth = set(predicted), set(label["behaviours"])
            for behaviour in BEHAVIOURS:
                metric = metrics[behaviour]
                if behaviour in predicted and behaviour in truth:
                    metric.tp += 1
                elif behaviour in predicted:
                    metric.fp += 1
                elif behaviour in truth:
                    metric.fn += 1
    return metrics


def assistant_text(record: Mapping[str, Any]) -> str:
    """The last assistant turn of a record in the schema's ``messages`` or BS-17k's ``conversations`` shape."""
    if "messages" in record:
        return [m["content"] for m in record["messages"] if m["role"] == "assistant"][-1]
    return [t["value"] for t in record["conversations"] if str(t["from"]).lower() in ("assistant", "gpt")][-1]


def check_alignment(record: Mapping[str, Any]) -> None:
    """Raise if a record's ``sentence_labels`` do not line up with ``split_sentences`` of its assistant turn."""
    texts = [s.text for s in split_sentences(assistant_text(record))]
    if texts != [label["text"] for label in record.get("sentence_labels", [])]:
        raise ValueError(f"record {record.get('id', '?')}: sentence_labels do not align with split_sentences")


def load_labelled_traces(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Records of a JSONL file of labelled traces (BS-17k rows with ``sentence_labels``), optionally one ``split``.

    The held-out evaluation set of the rule tagger is such a file
    (``tests/fixtures/behaviours/traces.jsonl``, splits ``tune`` and ``heldout``).
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if split is None or record.get("split") == split:
                    check_alignment(record)
                    records.append(record)
    return records


# ---------------------------------------------------------------------------- measured accuracy
# The rule tagger's measured per-sentence accuracy on the held-out part of the hand-labelled set
# (tests/fixtures/behaviours/traces.jsonl), written by `python benchmarks/bench_tagger.py --write`
# and checked against the current RULES by the tests, so reports can state how far to trust
# behaviour groups (paper Finding 3) without re-running the evaluation.
ACCURACY_PATH = Path(__file__).with_name("tagger_accuracy.json")
EVALUATION_SPLITS = ("tune", "heldout")


def rules_fingerprint(rules: Mapping[str, Sequence[str]] | None = None) -> str:
    """A short hash of the rules (``RULES`` by default): which rules a stored accuracy belongs to."""
    import hashlib

    rules = RULES if rules is None else rules
    blob = json.dumps({k: list(v) for k, v in sorted(rules.items())}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def measure_tagger_accuracy(dataset: str | Path, name: str = "tests/fixtures/behaviours/traces.jsonl") -> dict[str, Any]:
    """Per-split, per-behaviour P/R/F1 of the current rules on a labelled set, in the stored JSON's shape."""
    import hashlib

    raw = Path(dataset).read_bytes()
    splits: dict[str, Any] = {}
    for split in EVALUATION_SPLITS:
        records = load_labelled_traces(dataset, split)
        metrics = evaluate_tagger(records)
        splits[split] = {
            "traces": len(records),
            "thought_sentences": sum(_thought_sentence_count(assistant_text(r)) for r in records),
            "behaviours": {b: metrics[b].as_dict() for b in BEHAVIOURS},
        }
    return {
        "tagger": "rules",
        "rules_fingerprint": rules_fingerprint(),
        "dataset": name,
        "dataset_sha256": hashlib.sha256(raw).hexdigest()[:16],
        "unit": "sentence of the thought (split_sentences); gold labels per tests/fixtures/behaviours/LABELLING.md",
        "reported_split": "heldout",
        "splits": splits,
    }


def _thought_sentence_count(text: str) -> int:
    span = split_trace(text).thought
    return sum(
        1
        for s in split_sentences(text)
        if s.kind == "text" and (span is None or (s.start >= span[0] and s.end <= span[1]))
    )


def tagger_accuracy(path: str | Path | None = None) -> dict[str, Any]:
    """The stored measured accuracy (see :data:`ACCURACY_PATH`), with ``stale`` set when the rules changed since."""
    data = json.loads(Path(path or ACCURACY_PATH).read_text(encoding="utf-8"))
    data["stale"] = data.get("rules_fingerprint") != rules_fingerprint()
    return data
