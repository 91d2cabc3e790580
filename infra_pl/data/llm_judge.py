"""The paper's LLM behaviour classifier (Appendix E), against any OpenAI-compatible endpoint.

Why offered next to the rule tagger: the paper counts behaviours with an instruction-tuned LLM
(Qwen-32B-Instruct) prompted once per behaviour; reproducing its Figure 6 (right) numbers needs
the same prompts. The endpoint is whatever the user runs or pays for (vLLM, llama.cpp server,
a hosted API): set ``base_url`` and ``model``, and the *name* of the environment variable that
holds the key, so the key itself never appears in a config file or a log.

Two ways to ask, both with the Appendix E task descriptions and examples:

* counts per trace (:meth:`LLMJudgeTagger.count`, :meth:`~LLMJudgeTagger.count_many`): the
  paper's prompts verbatim, answer ``<count>N</count>``;
* labels per sentence (:meth:`~LLMJudgeTagger.label_many`, :meth:`~LLMJudgeTagger.tag`): the
  thought is sent with numbered sentences (:func:`~infra_pl.data.sentences.split_sentences`, the
  rule tagger's units) and the judge lists the numbers showing the behaviour,
  ``<sentences>2, 7</sentences>``; what sequence-level attribution (Eq. 7) groups by.

Batched runs (``count_many`` / ``label_many``) send requests ``concurrency`` at a time, cache
every successful reply under ``cache_dir`` (one JSON file per trace x behaviour, keyed by the
trace's SHA-256, the prompt's version and hash, the model and the temperature), so a rerun sends
only what is missing (resume after a crash or partial failure), and return a :class:`JudgeRun`
whose failures are counted by kind and listed, never dropped silently.

Serving a judge locally (any OpenAI-compatible server works; the paper used Qwen-32B-Instruct)::

    # vLLM (GPU): serves http://127.0.0.1:8000/v1
    vllm serve Qwen/Qwen2.5-32B-Instruct --port 8000 --max-model-len 32768
    # llama.cpp (CPU or GPU, a GGUF file): serves http://127.0.0.1:8080/v1
    llama-server -m qwen2.5-32b-instruct-q4_k_m.gguf --port 8080 -c 32768 -np 4

    judge = LLMJudgeTagger(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-32B-Instruct",
                           api_key_env=None, use_env_proxy=False, cache_dir="runs/judge_cache")
    run = judge.label_many(traces)        # run.labels[i][k]: behaviours of sentence k of trace i
    print(run.summary())                  # requests, cache hits, failures by kind

Only the standard library is used (``urllib``): no client package is required to run the tagger.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from infra_pl.data.schema import BEHAVIOURS
from infra_pl.data.sentences import Sentence, split_sentences
from infra_pl.data.traces import split_trace

__all__ = [
    "JUDGE_PROMPTS",
    "SENTENCE_PROMPTS",
    "SENTENCE_PROMPT_VERSION",
    "JudgeError",
    "JudgeFailure",
    "JudgeRun",
    "LLMJudgeTagger",
    "cohen_kappa",
    "number_sentences",
    "parse_count",
    "parse_sentence_numbers",
]

_FORMAT = (
    "{heading_hash} Task Format Format your response in markdown as follows:\n\n"
    "{heading_hash}{heading_hash} Thoughts [{thoughts}]\n\n"
    "{heading_hash}{heading_hash} {question} [yes/no]\n\n"
    "{heading_hash}{heading_hash} {number} <count> [1/2/...] </count>\n\n"
)

# Appendix E prompts as printed in the paper (Figures 10 and 11), with `{response}` where the
# trace goes. Two deliberate corrections in the exploration prompt, where the printed text was
# copied from the backtracking prompt: it asks to count "exploration" (printed: "backtracking")
# instances, and "does not explore" (printed: "does not exploration"). The paper does not print
# its subgoal-setting prompt; ours follows the same structure.
JUDGE_PROMPTS: dict[str, str] = {
    "exploration": (
        "#Task Description You will be provided with text from the internet. Evaluate whether the text "
        'contains any "searching for another approach after reaching correct answers" behavior, where the '
        "writer reaches a correct or satisfactory solution, but then explicitly continues to explore alternate "
        "methods or perspectives. This is a type of cognitive behavior that reflects intellectual curiosity or "
        "seeking multiple strategies even after solving the problem.\n\n"
        "This is not the same as: - Backtracking, where the writer changes method because the current one does "
        "not work or is incomplete. - Verification, where the writer checks the correctness of a method without "
        "attempting a different one.\n\n"
        'Examples of this behavior include: - "But let me just think again if there\'s another way to approach '
        'this." - "Another way to look at this is..." - "That\'s one way to get the result. Now let\'s see if we '
        'can also derive it using geometry." - "Alternatively, maybe there\'s a different way to approach the '
        'problem?"\n\n'
        "Count the number of distinct exploration instances and provide the count between the tags <count> "
        "</count>. If the writer does not explore, please provide a count of 0 as <count>0</count>.\n\n"
        "#Task Format Format your response in markdown as follows:\n\n"
        "##Thoughts [Brief description describing what behavior was noticed and where exploration occurred]\n\n"
        "##Does exploration thinking? [yes/no]\n\n"
        "##Number of exploration thinking steps <count> [1/2/...] </count>\n\n"
        "#Task to evaluate for exploration {response}\n\n"
        "#Response"
    ),
    "verification": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any verification steps. We want to mark instances where the writer explicitly checks their "
        "own work, such as by comparing the result to a known value or by checking the result of a "
        "calculation.\n\n"
        'Verification steps in mathematics might look like: - "Let\'s check our answer by substituting $x = 3$ '
        'back into the original equation." - "To verify this is correct, I\'ll differentiate the antiderivative '
        'and confirm it matches the original function." - "Let\'s test our formula with a simple case: when '
        '$n = 1$, we get $f(1) = 2$, which matches our expected result." - "To ensure this solution is valid, '
        'I\'ll check if it satisfies all the given constraints."\n\n'
        "If you find any verification steps, please count them and provide the count between the tags <count> "
        "</count>. If the text does not contain any verification steps, please provide a count of 0 as "
        "<count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description describing what behavior was noticed and where answer verification may have occurred",
            question="Does verification?",
            number="Number of answer verification steps",
        )
        + "# Task to evaluate for Verification {response}\n\n# Response"
    ),
    "backtracking": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any backtracking behavior, where the writer realizes a path won't work and explicitly goes "
        'back to try a different approach. An example of backtracking is: "Let me try again", "Wait", "I made '
        'a mistake", or "we need to try a different sequence of operations". We want to mark instances where '
        "the writer abandons a thought and backtracks to a previous computation.\n\n"
        'Backtracking in mathematics might look like: - "I started with the wrong formula. Let\'s use '
        'integration by parts instead." - "This approach leads to a contradiction. Going back to the original '
        'equation..." - "I see the error in my calculation. Let\'s recalculate using..." - "This algebraic '
        'manipulation isn\'t simplifying as expected. Let\'s try factoring differently."\n\n'
        "Count the number of distinct backtracking instances and provide the count between the tags <count> "
        "</count>. If the writer does not backtrack, please provide a count of 0 as <count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description describing what behavior was noticed and where backtracking occurred",
            question="Does backtrack?",
            number="Number of backtrack steps",
        )
        + "# Task to evaluate for backtracking {response}\n\n# Response"
    ),
    "backward_chaining": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any backward-chaining behavior, where the writer is working towards a goal but starts from "
        "the goal and works backward.\n\n"
        'Backward-chaining in mathematics might look like: - "To solve this equation, let\'s start with what '
        "we want to prove: $x = 4$. Working backward, if $x = 4$, then $x^2 - 5x + 4 = 0$ must be true. Let's "
        'verify this." - "If we want to find a function whose derivative is $2x + 3$, let\'s start with the '
        "desired result and work backward. The derivative of $x^2 + 3x + C$ would give us $2x + 3$.\" - \"To "
        "prove this triangle is a right triangle, I'll start by assuming the Pythagorean theorem holds "
        '($c^2 = a^2 + b^2$) and check if our side lengths satisfy this condition." - "In this optimization '
        "problem, we know the maximum value occurs when the derivative equals zero. If we set $f'(x) = 0$ and "
        'solve for $x$, we can find our critical points." - "To determine the initial velocity, I know the '
        "ball reaches a height of 20 meters. Working backward from this final state using the kinematic "
        'equation $h = vt - 0.5gt^2$, I can solve for the initial velocity $v$."\n\n'
        "Count the number of distinct backward-chaining instances and provide the count between the tags "
        "<count> </count>. If the reasoning does not contain any backward-chaining behavior, provide a count "
        "of 0 as <count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description of the observed behavior and where backward chaining may have occurred",
            question="Does the text exhibit backward chaining?",
            number="Number of backward chaining instances",
        )
        + "# Task to evaluate for backward chaining {response}\n\n# Response"
    ),
    "subgoal_setting": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any explicit subgoal setting, where the writer breaks the problem into smaller, intermediate "
        "goals, or announces the next step they are going to take before taking it.\n\n"
        'Subgoal setting in mathematics might look like: - "First, I\'ll find a common denominator, and then I '
        'can add the two fractions." - "Let\'s split this into two cases: $n$ even and $n$ odd." - "To find the '
        'area, I need the height first, so let me compute the height." - "The plan is: factor the polynomial, '
        'then check which roots lie in the interval."\n\n'
        "Count the number of distinct subgoal-setting instances and provide the count between the tags "
        "<count> </count>. If the text does not set any subgoals, provide a count of 0 as <count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description of the observed behavior and where subgoals were set",
            question="Does the text set subgoals?",
            number="Number of subgoal-setting instances",
        )
        + "# Task to evaluate for subgoal setting {response}\n\n# Response"
    ),
}

_COUNT_RE = re.compile(r"<count>\s*(\d+)\s*</count>", re.IGNORECASE)
_SENTENCES_RE = re.compile(r"<sentences>(.*?)</sentences>", re.IGNORECASE | re.DOTALL)

# Bump when the sentence-level prompt or its parsing changes meaning: it is part of every cache key
# (the template's hash is too, so an edited prompt never reads stale replies either way).
SENTENCE_PROMPT_VERSION = "sentences-v1"
COUNT_PROMPT_VERSION = "counts-v1"


def _description(prompt: str) -> str:
    """The task description and examples of an Appendix E prompt, without its counting instructions."""
    cut = min((k for k in (prompt.find("Count the number"), prompt.find("If you find any")) if k >= 0), default=len(prompt))
    return prompt[:cut].rstrip()


_SENTENCE_TASK = (
    "\n\nThe text below is the reasoning part of a response, split into numbered sentences: each "
    "sentence starts with its number in square brackets, like [3]. Code blocks carry no number. "
    "Decide for every numbered sentence whether that sentence itself shows the behavior described "
    "above (it announces it, carries it out or states its verdict). List the numbers of those "
    "sentences, separated by commas, between the tags <sentences> </sentences>. If no sentence shows "
    "the behavior, answer <sentences></sentences>.\n\n"
    "# Task Format Format your response in markdown as follows:\n\n"
    "## Thoughts [Brief description of where the behavior occurs]\n\n"
    "## Sentences <sentences> [numbers, comma-separated, or nothing] </sentences>\n\n"
    "# Text to evaluate {response}\n\n# Response"
)

# Sentence-level prompts: the Appendix E description and examples of each behaviour, then a request
# for the numbers of the sentences that show it.
SENTENCE_PROMPTS: dict[str, str] = {b: _description(p) + _SENTENCE_TASK for b, p in JUDGE_PROMPTS.items()}


class JudgeError(RuntimeError):
    """The judge endpoint failed or answered without a parseable count / sentence list.

    ``kind`` classifies the failure for :class:`JudgeRun` summaries: ``timeout``, ``connection``,
    ``http_<code>``, ``bad_response`` (not JSON or unexpected shape), ``unparseable`` (no answer
    tags), ``config`` (e.g. a missing API key).
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def parse_count(reply: str) -> int | None:
    """The last ``<count>N</count>`` in a reply (templates echoing ``[1/2/...]`` are ignored)."""
    matches = _COUNT_RE.findall(reply)
    return int(matches[-1]) if matches else None


def parse_sentence_numbers(reply: str) -> list[int] | None:
    """The numbers of the last parseable ``<sentences>...</sentences>`` in a reply, else ``None``.

    A tag holding only numbers (``[3]`` or ``3``, separated by commas or spaces), nothing, or
    "none" is parseable; a tag echoing the template (``[numbers, comma-separated, or nothing]``)
    is skipped.
    """
    for content in reversed(_SENTENCES_RE.findall(reply)):
        body = content.strip().strip(".")
        if body.lower() in ("", "none", "[]"):
            return []
        if re.fullmatch(r"[\d\s,\[\]]+", body):
            return sorted({int(n) for n in re.findall(r"\d+", body)})
    return None


def number_sentences(text: str) -> tuple[str, list[int]]:
    """The reasoning part of ``text`` with ``[k]`` before its k-th prose sentence, and their indices.

    The indices are into ``split_sentences(text)``: sentence k (1-based) of the numbered text is
    ``split_sentences(text)[indices[k - 1]]``. The numbered part is the thought when the trace has
    thought markers (the rule tagger's region), else the whole text; code blocks stay, unnumbered.
    """
    sentences = split_sentences(text)
    span = split_trace(text).thought
    region = [
        i
        for i, s in enumerate(sentences)
        if s.kind != "marker" and (span is None or (s.start >= span[0] and s.end <= span[1]))
    ]
    if not region:
        return "", []
    numbered: list[int] = []
    out: list[str] = []
    cursor = sentences[region[0]].start
    for i in region:
        s = sentences[i]
        out.append(text[cursor : s.start])
        if s.kind == "text":
            numbered.append(i)
            out.append(f"[{len(numbered)}] ")
        out.append(s.text)
        cursor = s.end
    return "".join(out), numbered


def cohen_kappa(
    labels_a: Sequence[Iterable[str]], labels_b: Sequence[Iterable[str]], behaviours: Sequence[str] = BEHAVIOURS
) -> dict[str, float]:
    """Cohen's kappa per behaviour between two taggers' per-sentence labels (same sentences, same order).

    Each behaviour is a binary decision per sentence. When both taggers give the same constant
    answer (chance agreement 1) kappa is undefined; it is reported as 1.0 (they agree on every
    sentence), and as ``nan`` for no sentences at all.
    """
    labels_a, labels_b = [set(x) for x in labels_a], [set(x) for x in labels_b]
    if len(labels_a) != len(labels_b):
        raise ValueError(f"cohen_kappa needs labels for the same sentences: {len(labels_a)} vs {len(labels_b)}")
    n = len(labels_a)
    out: dict[str, float] = {}
    for b in behaviours:
        if n == 0:
            out[b] = math.nan
            continue
        a = [b in x for x in labels_a]
        c = [b in x for x in labels_b]
        observed = sum(x == y for x, y in zip(a, c)) / n
        pa, pc = sum(a) / n, sum(c) / n
        chance = pa * pc + (1 - pa) * (1 - pc)
        out[b] = 1.0 if chance >= 1 else (observed - chance) / (1 - chance)
    return out


@dataclass(frozen=True)
class JudgeFailure:
    """One request of a batched run that failed (after retries)."""

    trace: int  # index into the texts passed to the batched call
    behaviour: str
    kind: str
    error: str


@dataclass
class JudgeRun:
    """Result of :meth:`LLMJudgeTagger.label_many` / :meth:`~LLMJudgeTagger.count_many`.

    ``labels`` (sentence mode) holds, per trace, one set of behaviours per sentence of
    ``split_sentences(text)`` (markers, code and the solution get empty sets), or ``None`` when a
    request for that trace failed; ``counts`` (count mode) holds per trace a count per behaviour,
    or ``None``. Failed requests are not cached, so calling again retries exactly those.
    """

    mode: str
    labels: list[list[set[str]] | None]
    counts: list[dict[str, int] | None]
    requests: int
    cached: int
    sent: int
    failures: list[JudgeFailure]
    dropped_numbers: int = 0  # sentence numbers in replies that name no sentence (ignored)

    @property
    def failed_traces(self) -> list[int]:
        return sorted({f.trace for f in self.failures})

    @property
    def ok(self) -> bool:
        return not self.failures

    def failure_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for failure in self.failures:
            counts[failure.kind] = counts.get(failure.kind, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        traces = len(self.labels if self.mode == "sentences" else self.counts)
        text = (
            f"{traces} trace(s), {self.requests} request(s): {self.cached} from cache, {self.sent} sent, "
            f"{len(self.failures)} failed"
        )
        if self.failures:
            kinds = ", ".join(f"{k} {v}" for k, v in self.failure_counts().items())
            shown = ", ".join(str(t) for t in self.failed_traces[:20])
            more = " ..." if len(self.failed_traces) > 20 else ""
            text += f" ({kinds}); {len(self.failed_traces)} trace(s) without labels: {shown}{more}; rerun to retry them"
        if self.dropped_numbers:
            text += f"; {self.dropped_numbers} out-of-range sentence number(s) ignored"
        return text

    def raise_for_failures(self) -> None:
        """Raise :class:`JudgeError` with the summary if any request failed."""
        if self.failures:
            first = self.failures[0]
            raise JudgeError(f"judge run incomplete: {self.summary()}; first error: {first.error}", kind=first.kind)


@dataclass
class _Job:
    trace: int
    behaviour: str
    key: str
    prompt: str


@dataclass
class LLMJudgeTagger:
    """Asks a chat-completions endpoint about behaviours in traces, one prompt per behaviour.

    Args:
        base_url: the API root, e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        model: model name the endpoint expects (the paper used Qwen-32B-Instruct).
        api_key_env: name of the environment variable holding the API key; ``None`` sends no key
            (local servers).
        timeout_s: per-request timeout (connect and read), seconds.
        temperature, max_tokens: sampling settings sent with each request.
        retries: extra attempts after a connection error, a timeout, HTTP 429 or 5xx (exponential backoff).
        backoff_s: first backoff delay.
        use_env_proxy: honour ``http(s)_proxy`` variables; turn off for endpoints on this machine.
        prompts: behaviour -> count prompt template with a ``{response}`` placeholder (Appendix E).
        sentence_prompts: behaviour -> sentence-level prompt template with a ``{response}`` placeholder.
        cache_dir: where batched runs keep successful replies (``None``: no cache). Safe to share
            between runs and models: the key covers trace, prompt, model and temperature.
        concurrency: requests in flight at once in batched runs.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 1024
    retries: int = 2
    backoff_s: float = 1.0
    use_env_proxy: bool = True
    prompts: Mapping[str, str] = field(default_factory=lambda: dict(JUDGE_PROMPTS))
    sentence_prompts: Mapping[str, str] = field(default_factory=lambda: dict(SENTENCE_PROMPTS))
    cache_dir: str | Path | None = None
    concurrency: int = 4

    def __post_init__(self) -> None:
        for name, prompts in (("prompt", self.prompts), ("sentence prompt", self.sentence_prompts)):
            missing = [b for b in BEHAVIOURS if b not in prompts]
            if missing:
                raise ValueError(f"LLMJudgeTagger has no {name} for {missing}")
            bad = [b for b, p in prompts.items() if "{response}" not in p]
            if bad:
                raise ValueError(f"judge {name}(s) for {bad} lack the '{{response}}' placeholder")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def name(self) -> str:
        """Short identity for outputs and tag caches (``infra_pl.data.tagging``)."""
        return f"llm_judge:{self.model}"

    @property
    def cache_key(self) -> str:
        """What else changes the sentence labels: prompt version and text, temperature."""
        blob = json.dumps([SENTENCE_PROMPT_VERSION, dict(sorted(self.sentence_prompts.items())), self.temperature])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def prompt(self, behaviour: str, text: str) -> str:
        """The filled count prompt (plain replacement: traces are full of braces)."""
        if behaviour not in self.prompts:
            raise ValueError(f"unknown behaviour {behaviour!r}; choose from {tuple(self.prompts)}")
        return self.prompts[behaviour].replace("{response}", text)

    def sentence_prompt(self, behaviour: str, text: str) -> str:
        """The filled sentence-level prompt for a trace (its reasoning part, sentences numbered)."""
        if behaviour not in self.sentence_prompts:
            raise ValueError(f"unknown behaviour {behaviour!r}; choose from {tuple(self.sentence_prompts)}")
        numbered, _ = number_sentences(text)
        return self.sentence_prompts[behaviour].replace("{response}", numbered)

    # ------------------------------------------------------------ one trace
    def count(self, text: str, behaviour: str) -> int:
        """The judge's count of ``behaviour`` in ``text``; :class:`JudgeError` if it gives none."""
        reply = self.complete(self.prompt(behaviour, text))
        return self._parse_count(reply, behaviour)

    def count_all(self, text: str, behaviours: Sequence[str] = BEHAVIOURS) -> dict[str, int]:
        """Counts for every behaviour, in the schema's ``behaviours`` shape."""
        return {b: self.count(text, b) for b in behaviours}

    def tag(self, text: str, answer: str | None = None) -> list[tuple[Sentence, set[str]]]:
        """Every sentence of ``text`` with the judge's behaviours (the :meth:`RuleTagger.tag` shape).

        ``answer`` is accepted for signature compatibility and not used (the judge reads the
        trace). Uses the cache; raises :class:`JudgeError` if a request fails.
        """
        run = self.label_many([text])
        run.raise_for_failures()
        return list(zip(split_sentences(text), run.labels[0]))

    # ------------------------------------------------------------ batched
    def label_many(self, texts: Sequence[str], behaviours: Sequence[str] = BEHAVIOURS) -> JudgeRun:
        """Per-sentence labels for many traces: cached, resumable, ``concurrency`` requests at a time."""
        numbered = [number_sentences(t)[1] for t in texts]
        sizes = [len(split_sentences(t)) for t in texts]
        jobs = [
            _Job(k, b, self._key("sentences", b, text), self.sentence_prompt(b, text))
            for k, text in enumerate(texts)
            if numbered[k]
            for b in behaviours
        ]
        results, failures, cached, sent = self._run(jobs, self._parse_sentences)
        failed = {f.trace for f in failures}
        labels: list[list[set[str]] | None] = [None if k in failed else [set() for _ in range(n)] for k, n in enumerate(sizes)]
        dropped = 0
        for job in jobs:
            row = labels[job.trace]
            if row is None:
                continue
            for number in results[job.key]:
                if 1 <= number <= len(numbered[job.trace]):
                    row[numbered[job.trace][number - 1]].add(job.behaviour)
                else:
                    dropped += 1
        return JudgeRun("sentences", labels, [None] * len(texts), len(jobs), cached, sent, failures, dropped)

    def count_many(self, texts: Sequence[str], behaviours: Sequence[str] = BEHAVIOURS) -> JudgeRun:
        """Appendix E counts for many traces: cached, resumable, ``concurrency`` requests at a time."""
        jobs = [_Job(k, b, self._key("counts", b, text), self.prompt(b, text)) for k, text in enumerate(texts) for b in behaviours]
        results, failures, cached, sent = self._run(jobs, self._parse_count)
        failed = {f.trace for f in failures}
        counts: list[dict[str, int] | None] = [None if k in failed else {} for k in range(len(texts))]
        for job in jobs:
            if counts[job.trace] is not None:
                counts[job.trace][job.behaviour] = results[job.key]
        return JudgeRun("counts", [None] * len(texts), counts, len(jobs), cached, sent, failures)

    # ------------------------------------------------------------ parsing
    def _parse_count(self, reply: str, behaviour: str) -> int:
        value = parse_count(reply)
        if value is None:
            snippet = reply[-300:].replace("\n", " ")
            raise JudgeError(
                f"{self.url}: no <count>N</count> in the {behaviour} reply (model {self.model}): ...{snippet}", kind="unparseable"
            )
        return value

    def _parse_sentences(self, reply: str, behaviour: str) -> list[int]:
        numbers = parse_sentence_numbers(reply)
        if numbers is None:
            snippet = reply[-300:].replace("\n", " ")
            raise JudgeError(
                f"{self.url}: no <sentences>...</sentences> in the {behaviour} reply (model {self.model}): ...{snippet}",
                kind="unparseable",
            )
        return numbers

    # ------------------------------------------------------------ cache
    def _key(self, mode: str, behaviour: str, text: str) -> str:
        templates = self.sentence_prompts if mode == "sentences" else self.prompts
        version = SENTENCE_PROMPT_VERSION if mode == "sentences" else COUNT_PROMPT_VERSION
        blob = json.dumps(
            {
                "mode": mode,
                "version": version,
                "template": hashlib.sha256(templates[behaviour].encode()).hexdigest(),
                "behaviour": behaviour,
                "model": self.model,
                "temperature": self.temperature,
                "trace": hashlib.sha256(text.encode()).hexdigest(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else Path(self.cache_dir) / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        path = self._cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a torn or foreign file: ask again (and overwrite it)
        return entry if entry.get("key") == key else None

    def _cache_put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        tmp.write_text(json.dumps({"key": key, **entry}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written entry

    # ------------------------------------------------------------ runner
    def _run(
        self, jobs: list[_Job], parse: Callable[[str, str], Any]
    ) -> tuple[dict[str, Any], list[JudgeFailure], int, int]:
        """Parsed answers by key (cache first, then the endpoint), failures, cache hits, requests sent."""
        results: dict[str, Any] = {}
        pending: list[_Job] = []
        seen: set[str] = set()
        cached = 0
        for job in jobs:
            entry = self._cache_get(job.key)
            if entry is not None:
                try:
                    results[job.key] = parse(entry["reply"], job.behaviour)
                    cached += 1
                    continue
                except JudgeError:
                    pass  # an entry the current parser rejects: ask again
            if job.key not in seen:  # identical traces in one batch are asked once
                seen.add(job.key)
                pending.append(job)

        def ask(job: _Job) -> tuple[_Job, Any, JudgeError | None]:
            try:
                reply = self.complete(job.prompt)
                value = parse(reply, job.behaviour)
            except JudgeError as err:
                return job, None, err
            self._cache_put(
                job.key,
                {"model": self.model, "behaviour": job.behaviour, "reply": reply, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
            )
            return job, value, None

        errors: dict[str, JudgeError] = {}
        if pending:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending))) as pool:
                for job, value, err in pool.map(ask, pending):
                    if err is None:
                        results[job.key] = value
                    else:
                        errors[job.key] = err
        failures = [
            JudgeFailure(job.trace, job.behaviour, errors[job.key].kind, str(errors[job.key])) for job in jobs if job.key in errors
        ]
        return results, failures, cached, len(pending)

    # ---------------------------------------------------------------- transport
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(
                    f"environment variable {self.api_key_env} (api_key_env) is not set; "
                    "export the API key there, or set api_key_env: null for a server without keys",
                    kind="config",
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, prompt: str) -> str:
        """One chat completion: the assistant message content."""
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        body = self._post(payload)
        try:
            return str(body["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.url}: unexpected response shape {json.dumps(body)[:300]}", kind="bad_response") from None

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload).encode("utf-8")
        handlers = [] if self.use_env_proxy else [urllib.request.ProxyHandler({})]
        opener = urllib.request.build_opener(*handlers)
        last, kind = "", "connection"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with opener.open(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                last, kind = f"HTTP {err.code}: {detail}", f"http_{err.code}"
                if err.code != 429 and err.code < 500:
                    break  # a client error will not fix itself
            except json.JSONDecodeError as err:
                raise JudgeError(f"{self.url}: response is not JSON ({err.msg})", kind="bad_response") from None
            except (TimeoutError, OSError) as err:  # URLError, socket timeouts, resets are OSErrors
                reason = getattr(err, "reason", err)
                timed_out = isinstance(err, TimeoutError) or isinstance(reason, TimeoutError) or "timed out" in str(reason)
                last = "timed out after %.1f s" % self.timeout_s if timed_out else f"{type(err).__name__}: {reason}"
                kind = "timeout" if timed_out else "connection"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise JudgeError(f"{self.url}: request failed after {attempt + 1} attempt(s): {last}", kind=kind)
