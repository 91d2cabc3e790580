"""Rule-based tagging of the five cognitive behaviours of paper §4.3 / Appendix E, per sentence.

Why rules (and not only the paper's LLM classifier, :class:`~infra_pl.data.llm_judge.LLMJudgeTagger`):
sequence-level attribution (Eq. 7) needs *which sentence* shows a behaviour, for every trace of
the training set, offline, deterministically and without a 32B judge model. The phrases are the discourse markers the paper itself
highlights ("Wait", "Verify", "First", "Alternatively", §4.4) and the examples of its Appendix E
prompts. All of them live in :data:`RULES`, the one place to edit.

Definitions (paper §4.3, following Gandhi et al. 2025; the gold labels of the evaluation set follow
``tests/fixtures/behaviours/LABELLING.md``):

* ``verification``: the writer checks their own work ("Let me check", "which matches", plugging a
  value into both sides, a verdict such as "Good."); once the answer is reached, also running a
  case through the result ("For "([)]" it returns False", "What if the list is empty?").
* ``exploration``: searching for another approach *after the answer has been reached*; the same
  phrase before the answer is just choosing a method, so it is not counted (see below).
* ``backtracking``: abandoning a path ("I made a mistake", "that's far too slow", "No, hold on",
  a leading "Wait" unless the sentence is a verification), and the repair right after it.
* ``subgoal_setting``: announcing a plan or the next step ("First, I ...", "So the task splits in
  two", "Next comes the input handling").
* ``backward_chaining``: reasoning from the goal to the inputs ("Working backward", "go from the
  end", "to get a(10) I need a(9), which in turn needs ..."), and the chain's next links.

When is the answer reached? At the first sentence of the thought that (a) states a result with an
answer phrase (``\\boxed{}``, "the answer is", "So the code would be", "That's one way to get the
result"), (b) states the final answer's value, taken from ``answer`` or the solution section, or
the last "So ... = X" of the thought: a value of two or more characters as a result ("= 42", "is
42") or closing a conclusion ("so she picked 17."), a one-character value only closing a
conclusion ("So the remainder is 4.", "so $x = 7$."), because it also shows up in intermediate
steps, or (c) is a complete program (a fenced block defining a function or class).
Independently, a trace that *ends* with a run of only verification / alternative-approach
sentences has reached its answer before that run (this covers code traces whose program is only
in the solution).

Measured accuracy: ``python benchmarks/bench_tagger.py`` scores the rules on a hand-labelled set of
realistic math and code traces (tuned on its ``tune`` split, reported on ``heldout``);
:func:`tagger_accuracy` returns the stored held-out numbers for reports.
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
    "describe_tagger_accuracy",
    "default_tagger",
    "evaluate_tagger",
    "load_labelled_traces",
    "measure_tagger_accuracy",
    "rules_fingerprint",
    "score_labels",
    "tag_sentences",
    "tagger_accuracy",
]

_LEAD = r"^(?:(?:so|ok(?:ay)?|hmm+|well|alright|and|but|oh|ah|now|also)\b[\s,]*)*"  # filler before a sentence opener
_SELF = r"(?:let(?:'s| me| us)|i(?:'ll| will)?|we(?:'ll| will)?)"  # the writer as the subject
_LIT = r"(?:[\"'\[(]|-?\d)"  # a concrete input: a string, list or tuple literal, or a number
_VERDICT = r"(?:good|fine|great|perfect|correct|right|yes|yep|exactly|equal|same)"  # one-word verdicts of a check

# ONE editable place: behaviour -> regular expressions (case-insensitive, searched in a sentence).
# Auxiliary entries (how a behaviour depends on its context), each explained where it is used:
#   backtracking_weak          backtracking unless the sentence is a verification ("Wait", "hold on")
#   backtracking_followup      backtracking right after a backtracking sentence (the repair: "it has to be ...")
#   backward_chaining_followup backward chaining right after a backward-chaining sentence (the chain goes on)
#   verification_after_answer  verification once the answer is reached (running a case through the result)
#   check_purpose              a sentence that recomputes "to be sure" is a verification, not exploration
#   answer_reached             sentences after which alternative approaches count as exploration
#   answer_value               a sentence stating the final answer's value ({value}: the escaped value)
#   answer_value_short         the same for a one-character answer, which must close a conclusion
RULES: dict[str, tuple[str, ...]] = {
    "verification": (
        rf"\b{_SELF} (?:just )?(?:double[- ])?(?:check|verify|confirm|test)\b",
        r"\bto (?:double[- ])?(?:verify|check|confirm|ensure)\b",
        r"\bdouble[- ]check",
        r"\bcross[- ]check",
        r"\bsanity[- ]?check",
        r"\bverif(?:y|ied|ies|ying|ication)\b",
        r"\b(?:which|that|this|it|and) (?:matches|checks out|is consistent|confirms|agrees)\b",
        r"\bmatching (?:the|what|our|my)\b",
        r"\bmatch(?:es)? (?:the|our|my) (?:expected|original|given|known)\b",
        r"\bchecks out\b",
        r"\b(?:agrees|consistent)\b",
        r"\b(?:substitut|plugg?)\w*\b",
        r"\b(?:into|in|on|with) (?:both|either|each) sides?\b|\b(?:left|right)(?:-hand)? side (?:is|gives|equals|=)",
        r"\bexactly (?:the|what) (?:left|right|expected|original|given)",
        rf"\b{_SELF} (?:compare|recount|re-?derive|replay|retrace|rerun)\b",
        r"\bextraneous\b",
        r"\bto be (?:safe|sure)\b|\bmake sure\b|\bplausible\b",
        r"\bas (?:expected|required)\b|\bas (?:it|they) (?:should|must)\b|\b(?:lands?|ends? up) on\b",
        r"\b(?:expected|sample(?:'s)?|correct|known) (?:output|result|answer|value|behaviou?r)s?\b|\bthe expected\b(?! value)",
        r"\bsame (?:value|answer|result|count|number|digit|output|total|string) (?:as|again|both|either)\b",
        r"\bthe same (?:value|answer|result|count|number|digit|output|total|string)[.!]?$",
        r"(?:\d|\$|\))\s*,?\s*(?:as well|too|again)[.!]?$",
        r",\s*(?:fine|good|right|correct|ok(?:ay)?)[.!]?$",
        r"\b(?:that|this|which|it) (?:fits|holds)\b",
        rf"{_LEAD}(?:correct|match(?:es|ed)?)\b",
        r"\b(?:which|that|this|it)(?:'s| is| was) (?:right|correct)\b|\bis right\b",
        r"\b(?:did|do|have) (?:i|we) (?:\w+ ){0,4}(?:right|correctly)\b",
        r"^(?:yes,?\s*)?(?:that(?:'s| is) |this is |it(?:'s| is) )?correct[.!]?$",
        r"\b(?:the|this|that|my|our) (?:code|answer|result|solution|approach|formula) (?:is|seems|looks) (?:correct|right)\b",
        r"\b(?:seems|looks) (?:right|correct|good|fine)\b",
        rf"{_LEAD}(?:good|fine|great|perfect)\b",
        rf"{_LEAD}{_VERDICT}\b[,!]?\s*(?:\$?[-\w./\\{{}}^]+\$?)?[.!]?$",
        rf"{_LEAD}(?:equal|same|exactly)\b(?:[,\s]+[\w$]+){{0,6}}[.!]?$|{_LEAD}both (?:hold|work|match|agree)\b",
        rf"{_LEAD}(?:a )?(?:quick |small |final )?(?:test|check)\b",
        rf"{_LEAD}(?:a )?(?:quick |small |simple |tiny |final )?(?:test|check|case|example)\s*:",
        rf"{_LEAD}(?:re)?trac(?:e|ing)\b",
    ),
    "exploration": (
        rf"{_LEAD}alternatively\b",
        r"\banother (?:\w+ )?(?:way|approach|method|solution|strategy|idea|perspective|angle|option|route|trick|view)\b",
        r"\b(?:different|alternative|other) (?:way|approach|method|solution|strategy|perspective|angle|route)s?\b",
        r"\bcan (?:also|alternatively) (?:derive|solve|compute|get|obtain|show|prove|write|do|approach|find)\b",
        r"\b(?:could|can|might|would) (?:also|instead|alternatively)\b|\bone could\b",
        r"\b(?:one more|a second) (?:way|approach|method)\b",
        r"\bthere(?:'s| is) also (?:a|an|the)\b",
        r"\b(?:quicker|faster|simpler|cleaner|slicker|neater|shorter|nicer) (?:way|route|method|approach|argument|proof)\b",
        r"\bmore (?:quickly|directly|simply|easily|elegantly)\b|\bout of curiosity\b",
        r"\bwould work (?:as well|too)\b|\bfor comparison\b|\bversion would\b|\bfor completeness\b",
        r"\b(?:let me|let's|i'll) also (?:think|look|try|do|solve|derive|consider|approach|count)\b",
        r"\b(?:see|look at|think about|view|approach) (?:it|this|that) differently\b",
        rf"{_LEAD}or (?:through|via|with|using|by)\b",
        rf"{_LEAD}(?:geometrically|algebraically|combinatorially|graphically|intuitively|recursively),",
        r"\b(?:algebraic|geometric|recursive|iterative|combinatorial|analytic|graphical) (?:version|approach|way|method|argument|view|interpretation)\b",
        r"\b(?:also|too) exists?\b|\bexists? (?:as well|too)\b",
        r"\bwould (?:avoid|save|skip)\b|\bwould do (?:it|this|that)\b",
    ),
    "backtracking": (
        r"\b(?:i|we) (?:made|make|have made|'ve made) (?:a |an )?(?:mistake|error)\b",
        r"\b(?:that|this|it)(?:'s| is| was) (?:wrong|incorrect|not right|a mistake)\b",
        r"\bwrong (?:formula|approach|method|assumption|answer|sign|value|step|equation)\b",
        r"\bmis(?:read|calculated|computed|counted|understood|applied|took)\b",
        r"\b(?:try|do (?:it|this)|start) (?:again|over)\b",
        r"\b(?:go|going|went) back to\b",
        r"\b(?:see|found|spot(?:ted)?|notice) (?:the|an|my) (?:error|mistake)\b",
        r"\berror in (?:my|the|our) (?:calculation|reasoning|logic|work|derivation)\b",
        r"\bleads? to a contradiction\b",
        r"\b(?:doesn't|does not|won't|will not|didn't|did not|isn't|is not) (?:work|working|simplifying|right|correct)\b",
        r"\btry (?:a |an )?(?:different|another|new) (?:sequence|approach|method|way|strategy|formula)\b",
        rf"\b{_SELF} (?:use|try) [^.]*\binstead\b",
        r"\btry [^.]*\bdifferently\b",
        r"\bscratch that\b|\bscrap\b",
        r"\bactually,? no\b",
        r"\bon second thought\b",
        r"\bcan(?:'t|not) be (?:right|correct)\b|\b(?:doesn't|does not) make sense\b|\bmessed up\b",
        r"\b(?:that|this)(?:'s| is) not (?:right|correct|possible)\b|\bcontradict",
        r"\b(?:reconsider|rethink)\b",
        rf"{_LEAD}(?:no|nope)\s*[,.!;]",
        r"\b(?:i|we) (?:forgot|missed|overlooked|neglected|dropped|left out)\b",
        r"\b(?:i|we) only (?:accounted|counted|considered|handled|divided|checked)\b",
        r"\b(?:that|this|which|it)(?:'s| is| was)\b[^.]*\btoo (?:slow|big|large|long|many|much|expensive)\b",
        rf"{_LEAD}(?:way |far |much )?too (?:slow|big|large|long|expensive)\b",
        r"\b(?:loop|approach|idea|method|brute force|greedy)s? (?:is|are) out\b",
        r"\b(?:won't|will not|doesn't|does not) scale\b|\bdown that (?:road|path|route)\b",
        r"\bonly works (?:if|when|for)\b|\bbreaks (?:the|this|that|my|our)\b",
        r"\b(?:suspicious|strange|weird|fishy)\b",
        r"\braises? (?:an? )?\w*(?:Error|Exception)\b|\bis broken\b",
        r"\b(?:loops?|runs?) (?:forever|infinitely)\b|\binfinite loop\b|\bnever (?:makes progress|terminates|ends)\b",
        r"\b(?:is|gives|returns|prints|outputs) \S+ instead of\b",
        r",\s*not \$?[-\w./\\{}^]+\$?[.!]?$",
    ),
    "backtracking_weak": (rf"{_LEAD}wait\b", r"\bhold on\b", r"\b(?:redo|recalculate|recompute)\b"),
    "backtracking_followup": (
        r"\b(?:has|have|ought) to\b|\bneeds?\b|\bshould\b|\bmust\b|\binstead\b",
        r"\bcorrect(?:ed|ing)?\b|\bfix(?:ed|ing)?\b|\bactually\b|\breally\b|\bbecomes\b|\bback\b",
    ),
    "subgoal_setting": (
        _LEAD
        + r"(?:first(?:ly)?|next|then|finally|second(?:ly)?|third(?:ly)?|after that)\b[\s,]*(?:(?:maybe|perhaps|probably)\s+)?"
        + rf"{_SELF}\b(?!\s*(?:get|got|have|had|obtain|see|saw|notice|realize|know|found)\b)",
        r"^now,?\s+(?:i|we|let(?:'s| me| us))\b(?!\s*(?:get|got|have|had|obtain|see|saw|notice|realize|know|found)\b)",
        r"\b(?:break|split|divide|decompose) (?:this|it|the (?:problem|task))(?: down)? into\b",
        r"\b(?:splits?|breaks?(?: down)?|divides?|falls?) in(?:to)? (?:two|three|four|\d|(?:smaller |separate )?(?:parts|pieces|steps|cases|subproblems))\b",
        r"\b(?:two|three|four|several) (?:parts|steps|pieces|stages|phases|subproblems)\b",
        r"\bstep[- ]by[- ]step\b",
        r"\blet(?:'s| me| us) (?:start|begin) by\b",
        r"\b(?:the|my|our) plan\b",
        r"\bsub-?(?:goal|problem|task)s?\b",
        r"\b(?:i|we) (?:need|have|want) to (?:first|start by)\b",
        r"\bin (?:smaller|separate|manageable) (?:steps|parts|pieces)\b",
        r"\bbreak (?:it|this) down\b|\bthe steps (?:are|would be)\b",
        rf"{_LEAD}(?:now )?for the (?:first|second|third|next|last|other) (?:case|part|step|stage)\b",
        r"\b(?:comes?|goes|go) first\b(?=\s*[:.,;!]|$)",
        r"\bstep (?:one|1) (?:is|will be) to\b|\bfirst step\b|\bfirst\b[^.]*\b(?:afterwards|after that)\b",
        r"^now,? (?:for )?the (?:\w+ ){0,2}(?:case|part|step|stage|half)\b",
        rf"{_LEAD}(?:next|then|first) (?:comes?|is|are|up)\b",
        r"\b(?:first|do that first) and then\b|\band then (?:\w+ )?(?:solve|compute|find|check|add|return|print|use|back-substitute)\b",
        rf"(?:{_LEAD}|\bso )(?:i'll|i will|we'll|let me|let's) \w+[^.;:,]*?\band (?:then )?[a-z]{{3,}}\b",
        rf"(?:{_LEAD}|\bso )(?:i'll|i will|we'll|let me|let's) \w+[^.;:,]*, \w+[^.;:]*?,? and (?:then )?[a-z]{{3,}}\b",
    ),
    "backward_chaining": (
        r"\bwork(?:ing|ed|s)? backwards?\b",
        r"\bbackwards? from\b",
        r"\bstart(?:ing)? (?:from|with) (?:what (?:we|i) (?:want|need) to (?:prove|show|find|get)"
        r"|the (?:desired|final|target|goal|end|expected) (?:result|state|outcome|value|answer)"
        r"|the (?:result|goal|answer|end|target)\b)",
        r"\b(?:go|going|reason|reasoning|work|working|think|thinking|start|starting) from the (?:end|goal|target|answer|result|last)\b",
        r"\bundo (?:each|every|all|the last|the) (?:of the )?steps?\b",
        r"\bin reverse order\b",
        r"\breverse (?:the|each|all) (?:steps|operations)\b",
        r"\bstart(?:ing)? by assuming\b",
        r"\b(?:maximum|minimum|optimum|optimal value|largest|smallest|greatest|least)\b[^.]*\b(?:occurs?|happens?|has to occur|must occur|is (?:achieved|attained|reached|obtained))\s+(?:when|if|at|where)\b",
        r"\bwhat (?:would|must) (?:be|hold) (?:true )?(?:for|if|so that)\b",
        r"\bin turn\b|\bwhich (?:in turn )?(?:needs?|requires?)\b",
        r"\b(?:think about|look at|consider|focus on) the (?:very )?last (?:move|step|coin|operation|item|element|action|stage)\b",
        r"\bif the last \w+ (?:used |taken |made )?is\b",
        r"\bmust have been\b|\bundo the (?:story|process|steps?|operations?)\b",
        r"\b(?:right |just )?before (?:the|that|this|her|his|its) \w+,? (?:she|he|it|they|i|we|there) (?:had|was|were|must)\b",
        r"\bat (?:the|its|a) (?:max(?:imum)?|min(?:imum)?|optimum|peak|vertex)\b[^.]*\b(?:slope|derivative)\b",
        r"\bfor [^,.]{1,60} to [^,.]{1,60}, [^.]*\b(?:must|needs?|has to|have to)\b",
    ),
    "backward_chaining_followup": (
        rf"{_LEAD}before\b",
        r"\bso \S+ (?:is|are) (?:a )?(?:winning|losing)\b",
        r"\bmust have\b",
        rf"{_LEAD}at the end\b",
        r"\b(?:that|this|which) means\b|\bso (?:before|the (?:number|answer|best|count)|for each|she|he|they)\b",
        r"\b(?:is|are) (?:good|winning|losing|reachable|safe) (?:if|when|exactly when)\b",
        r"\bfrom right to left\b|\bfrom the (?:back|end|last)\b",
    ),
    "verification_after_answer": (
        rf"\b{_SELF} (?:run|walk|trace|retrace|replay|feed|plug|test|try)\b[^.]*\b(?:through|forward|back|into|on|with)\b",
        rf"{_LEAD}(?:let me |let's )?(?:run(?:ning)?|walk(?:ing)?|feed(?:ing)?|tr(?:y|ying)|test(?:ing)?|tak(?:e|ing)|plug(?:ging)?)\b",
        rf"{_LEAD}(?:for|with|on|in) (?:the )?(?:(?:first|second|third|other|last|next) )?(?:sample|example|input|test)s?\b",
        rf"{_LEAD}(?:for|with|on|take|try|check|test) (?:\w+ ){{0,2}}(?:=\s*)?(?:{_LIT}|\$)|{_LEAD}at \$",
        rf"{_LEAD}(?:for |with |on )?\$?\w+\s*=\s*(?:\[[^\]]*\]|[^,:]{{1,12}}):",
        rf"{_LEAD}\$?[a-z]\w*\s*=\s*-?\d+\$? \w+s\b",
        rf"{_LEAD}-?\d+ (?:would|gives?|returns?|prints?|outputs?|becomes?|yields?)\b",
        r"\blike (?:[\"'\[$]|-?\d)",
        r"\bthe same (?:input|example|case|sample)\b",
        r"\b(?:endpoints?|boundary (?:values?|points?|cases?))\b",
        r"\b(?:that|this|it) works\b|\bso \S+ works\b",
        rf"{_LEAD}[\"'\[]",
        rf"{_LEAD}(?:for )?(?:example|sample)\b",
        r"\bwhat (?:about|if)\b|\blet(?:'s| me) see (?:if|whether)\b",
        r"\b(?:edge|corner|boundary) cases?\b",
        rf"{_LEAD}if\b[^,]*,? (?:like|say|e\.g\.|for example)\b",
        r"^(?:now|and|also)\b[^.]*\b(?:gives|returns|prints|outputs|produces|becomes)\b",
    ),
    "check_purpose": (
        r"\bto be (?:safe|sure)\b|\bmake sure\b|\bsanity\b|\bdouble[- ]check|\bto (?:verify|check|confirm)\b",
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
    "answer_value": (
        r"(?:=|\bis|\bequals|\bgives?|\bget|\bgot|\bbe)\s*\$?\s*{value}(?!\d)(?!\.\d)",
        r"\b(?:so|thus|therefore|hence)\b[^.]*(?<![\w.]){value}\s*\$?(?:\s+[a-z]+)?\s*[.!]?$",
    ),
    "answer_value_short": (
        r"\b(?:so|thus|therefore|hence|that(?:'s| is)|this (?:is|gives))\b[^.]*(?<![\w.]){value}\s*\$?(?:\s+[a-z]+)?\s*[.!]?$",
    ),
}
_AUXILIARY = (
    "backtracking_weak",
    "backtracking_followup",
    "backward_chaining_followup",
    "verification_after_answer",
    "check_purpose",
    "answer_reached",
    "answer_value",
    "answer_value_short",
)
_TEMPLATES = ("answer_value", "answer_value_short")  # compiled per trace, with the answer in {value}
_RESULT_RE = re.compile(r"^(?:so|therefore|thus|hence)\b[^=]*=\s*(-?[\w.\\{}/^]+?)[.,;:]?(?:\s|$)", re.IGNORECASE)
_COMPLETE_CODE_RE = re.compile(r"^\s*(?:def|class)\s+\w+", re.MULTILINE)
_REQUIRED = (*BEHAVIOURS, "backtracking_weak", "answer_reached")  # the other auxiliary entries may be left out


@dataclass(frozen=True)
class _Compiled:
    """One alternation per rule key: a single regex search per key and sentence (traces are long)."""

    patterns: dict[str, re.Pattern[str]]
    templates: dict[str, str]

    @classmethod
    def from_rules(cls, rules: Mapping[str, Sequence[str]]) -> "_Compiled":
        missing = [key for key in _REQUIRED if key not in rules]
        if missing:
            raise ValueError(f"behaviour rules are missing entries for {missing}")
        unknown = set(rules) - set(BEHAVIOURS) - set(_AUXILIARY)
        if unknown:
            raise ValueError(f"behaviour rules have unknown entries {sorted(unknown)}; known: {BEHAVIOURS + _AUXILIARY}")
        compiled, templates = {}, {}
        for key in (*BEHAVIOURS, *_AUXILIARY):
            patterns = tuple(rules.get(key, ()))
            for pattern in patterns:  # compile one by one first, so an error names its rule
                try:
                    re.compile(pattern.replace("{value}", "0") if key in _TEMPLATES else pattern)
                except re.error as err:
                    raise ValueError(f"behaviour rule for {key!r} is not a valid regex: {pattern!r}: {err}") from None
            joined = "|".join(f"(?:{p})" for p in patterns) or r"(?!x)x"
            if key in _TEMPLATES:
                templates[key] = joined
            else:
                compiled[key] = re.compile(joined, re.IGNORECASE)
        return cls(compiled, templates)

    def hit(self, key: str, text: str) -> bool:
        return self.patterns[key].search(text) is not None

    def value_pattern(self, value: str) -> re.Pattern[str] | None:
        """Matches a sentence stating ``value`` as a result (``answer_value`` / ``answer_value_short``)."""
        value = value.strip().strip("$").strip()
        # A one-character answer ("2") shows up in intermediate steps long before it is the answer,
        # so it must close a conclusion ("So the remainder is 4."); very long ones are not searched.
        if not value or len(value) > 40:
            return None
        template = self.templates["answer_value_short" if len(value) < 2 else "answer_value"]
        return re.compile(template.replace("{value}", re.escape(value)), re.IGNORECASE)


@dataclass
class RuleTagger:
    """Sentence-level behaviour tagger driven by :data:`RULES` (or your own rules of the same shape).

    Args:
        rules: behaviour -> regexes, plus the auxiliary entries described at :data:`RULES`
            (``backtracking_weak`` and ``answer_reached`` are required, the others default to none).
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
        reached, which gates exploration and the checks that run a case through the result.

        Context rules, in order: a sentence's own matches; ``backtracking_weak`` adds backtracking
        unless the sentence is a verification; ``backtracking_followup`` / ``backward_chaining_followup``
        extend a behaviour of the previous prose sentence (a repair only when the sentence shows
        nothing else but a plan); after the answer, exploration candidates count unless they
        recompute "to be sure" (``check_purpose``, then they are verification), and other sentences
        matching ``verification_after_answer`` are verification; a weak backtracking is dropped
        where verification was found.
        """
        sentences = split_sentences(text)
        region = self._region(text, sentences)
        tags: list[set[str]] = [set() for _ in sentences]
        weak: set[int] = set()  # backtracking only from a weak cue
        candidates: dict[int, bool] = {}
        previous: set[str] | None = None  # tags of the previous prose sentence (None after code)
        for i in region:
            sentence = sentences[i]
            if sentence.kind != "text":
                previous = None
                continue
            found = {b for b in BEHAVIOURS if b != "exploration" and self._compiled.hit(b, sentence.text)}
            if "verification" not in found and "backtracking" not in found and self._compiled.hit("backtracking_weak", sentence.text):
                found.add("backtracking")
                weak.add(i)
            if previous is not None:
                if (
                    not found - {"subgoal_setting"}
                    and "backtracking" in previous
                    and self._compiled.hit("backtracking_followup", sentence.text)
                ):
                    found = {"backtracking"}  # the repair of a failed path, even when worded as a plan
                    weak.discard(i)
                if "backward_chaining" in previous and self._compiled.hit("backward_chaining_followup", sentence.text):
                    found.add("backward_chaining")
            tags[i] = found
            candidates[i] = self._compiled.hit("exploration", sentence.text)
            previous = found
        start = self._exploration_start(text, sentences, region, tags, candidates, answer)
        for i, is_candidate in candidates.items():
            if i < start:
                continue
            sentence_text = sentences[i].text
            if is_candidate:  # an alternative approach, unless it is recomputed "to be sure"
                tags[i].add("verification" if self._compiled.hit("check_purpose", sentence_text) else "exploration")
            elif self._compiled.hit("verification_after_answer", sentence_text) and (
                "backtracking" not in tags[i] or i in weak
            ):
                tags[i].add("verification")
            if "verification" in tags[i] and i in weak:
                tags[i].discard("backtracking")
        return list(zip(sentences, tags))

    def count(self, text: str, answer: str | None = None) -> dict[str, int]:
        """Number of sentences showing each behaviour (a sentence may show several)."""
        counts = {b: 0 for b in BEHAVIOURS}
        for _, found in self.tag(text, answer):
            for behaviour in found:
                counts[behaviour] += 1
        return counts

    def matches(self, key: str, text: str) -> bool:
        """Whether a rule of ``key`` (a behaviour or an auxiliary entry other than the templates) matches."""
        return self._compiled.hit(key, text)

    def answer_reached(self, text: str, answer: str | None = None) -> int | None:
        """Index (into ``split_sentences(text)``) of the sentence where the answer is first reached, if any."""
        sentences = split_sentences(text)
        return self._answer_reached(text, sentences, self._region(text, sentences), answer)

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
        """First sentence index after which the answer counts as reached (exploration, run-through checks)."""
        reached = self._answer_reached(text, sentences, region, answer)
        start = float("inf") if reached is None else reached + 1
        # A trailing run of checks / alternatives: the work was done before it.
        tail = None
        for i in reversed(region):
            s = sentences[i]
            if s.kind == "text" and (
                candidates.get(i) or tags[i] == {"verification"} or self._compiled.hit("verification_after_answer", s.text)
            ):
                tail = i
                continue
            break
        return start if tail is None else min(start, tail)

    def _answer_reached(self, text: str, sentences: list[Sentence], region: list[int], answer: str | None) -> int | None:
        value = answer if answer not in (None, "") else _solution_answer(text)
        if value is None:
            value = self._last_result(sentences, region)
        value_re = self._compiled.value_pattern(value) if value is not None else None
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
EVALUATION_SPLITS = ("tune", "dev", "heldout")


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
        "tuned_on": ["tune", "dev"],
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


def describe_tagger_accuracy(
    tagger: str = "rules",
    kappa: Mapping[str, float] | None = None,
    judge_model: str | None = None,
    judge_metrics: Mapping[str, Mapping[str, float]] | None = None,
    accuracy: Mapping[str, Any] | None = None,
    threshold: float = 0.8,
) -> str:
    """Markdown for a report: how far behaviour groups (paper Finding 3) can be trusted.

    States which tagger labelled the sentences (``"rules"`` or ``"judge"``), the rules' measured
    held-out precision / recall / F1 per behaviour (from :func:`tagger_accuracy`, or ``accuracy``),
    the judge's when ``judge_metrics`` (behaviour -> {precision, recall, f1}) were measured, and the
    rules-vs-judge agreement (Cohen's kappa per behaviour) when both ran.
    """
    if tagger not in ("rules", "judge"):
        raise ValueError(f"tagger must be 'rules' or 'judge', got {tagger!r}")
    data = dict(accuracy) if accuracy is not None else tagger_accuracy()
    if accuracy is not None:
        data["stale"] = data.get("rules_fingerprint") != rules_fingerprint()
    split = data["splits"][data.get("reported_split", "heldout")]
    who = (
        f"the LLM judge ({judge_model or 'model not recorded'}, Appendix E descriptions, sentence-level prompts)"
        if tagger == "judge"
        else f"the rule tagger (`infra_pl.data.behaviours.RULES`, fingerprint {data['rules_fingerprint']})"
    )
    lines = [
        f"Behaviour labels per sentence come from {who}.",
        "",
        f"Rule tagger accuracy, measured per thought sentence on {split['traces']} held-out hand-labelled "
        f"long-CoT traces ({split['thought_sentences']} sentences, `{data['dataset']}`; tuned on "
        f"{' + '.join(data.get('tuned_on', ['tune']))}, not on these):",
        "",
        "| behaviour | gold | precision | recall | F1 |" + (" judge P | judge R | judge F1 |" if judge_metrics else "")
        + (" kappa rules vs judge |" if kappa else ""),
        "|---|---|---|---|---|" + ("---|---|---|" if judge_metrics else "") + ("---|" if kappa else ""),
    ]
    weak = []
    for b in BEHAVIOURS:
        m = split["behaviours"][b]
        row = f"| {b} | {m['support']} | {m['precision']:.2f} | {m['recall']:.2f} | {m['f1']:.2f} |"
        if judge_metrics:
            j = judge_metrics.get(b, {})
            row += "".join(f" {j[k]:.2f} |" if k in j else " - |" for k in ("precision", "recall", "f1"))
        if kappa:
            row += f" {kappa[b]:+.2f} |" if b in kappa else " - |"
        lines.append(row)
        if m["f1"] < threshold:
            weak.append(b)
    lines.append("")
    if tagger == "rules" and weak:
        lines.append(
            f"Held-out F1 is below {threshold:.1f} for {', '.join(weak)}: many sentences showing these behaviours are "
            "missed or mislabelled, so their groups' average influence mixes in unlabelled or wrong sentences; "
            "read differences involving them as indicative only, or label with the LLM judge and compare."
        )
    if data.get("stale"):
        lines.append(
            "WARNING: the rules changed since this accuracy was measured; rerun "
            "`python benchmarks/bench_tagger.py --write`."
        )
    if tagger == "judge" and not judge_metrics:
        lines.append("The judge's own accuracy on the hand-labelled set was not measured for this run.")
    if kappa is None:
        lines.append("Only one tagger ran, so no agreement between taggers is reported.")
    return "\n".join(lines)
