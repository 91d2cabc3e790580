"""Behaviour labels for a whole training set, tagged once per trace and cached: what attribution reads.

Why a separate step (and not labels stored with the data): only the embedded demo ships its own
sentence labels; every real dataset (Bespoke-Stratos, OpenThoughts, MetaMathQA) has none, so the
paper's behaviour analyses (Figure 6 right, Table 2 left) must tag the traces they score. Tagging
runs on the *whole* assistant turn, because exploration only counts after the answer is reached
(the tagger needs the context), and the sentence-level result is then mapped onto whichever
sentences a caller scores by character offsets. A long trace costs ~0.1 s with the rules and a
network round trip with an LLM judge, so results are cached per (tagger, trace) in a JSONL file
that a rerun (or an interrupted run) reuses.

A tagger is any object with ``tag(text, answer) -> [(Sentence, set_of_behaviours), ...]``
(:class:`~infra_pl.data.behaviours.RuleTagger`, the LLM judge) and, optionally, a ``name``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

from infra_pl.data.schema import BEHAVIOURS
from infra_pl.data.sentences import Sentence

__all__ = [
    "BehaviourTagger",
    "TaggedTrace",
    "TagCache",
    "agreement",
    "assistant_text",
    "resolve_tagger",
    "sentence_labels",
    "tag_examples",
    "tagger_name",
]


class BehaviourTagger(Protocol):
    """What attribution needs from a tagger: sentence-level labels of one trace."""

    def tag(self, text: str, answer: str | None = None) -> list[tuple[Sentence, set[str]]]: ...


@dataclass(frozen=True)
class TaggedTrace:
    """The tagged sentences of one assistant turn: ``(start, end, labels)`` in character offsets."""

    spans: tuple[tuple[int, int, tuple[str, ...]], ...]

    def counts(self) -> dict[str, int]:
        """Sentences showing each behaviour (the schema's ``behaviours`` shape)."""
        counts = {b: 0 for b in BEHAVIOURS}
        for _, _, labels in self.spans:
            for label in labels:
                if label in counts:
                    counts[label] += 1
        return counts

    @classmethod
    def from_tagged(cls, tagged: Iterable[tuple[Sentence, set[str]]]) -> "TaggedTrace":
        return cls(tuple((s.start, s.end, tuple(sorted(labels))) for s, labels in tagged))


def tagger_name(tagger: Any) -> str:
    """A short, stable name of a tagger for outputs and cache keys (``rules``, ``llm_judge:<model>``)."""
    name = getattr(tagger, "name", None)
    if isinstance(name, str) and name:
        return name
    from infra_pl.data.behaviours import RuleTagger

    if isinstance(tagger, RuleTagger):
        return "rules"
    model = getattr(tagger, "model", None)
    return f"{type(tagger).__name__}:{model}" if model else type(tagger).__name__


def _rules_fingerprint(tagger: Any) -> str:
    rules = getattr(tagger, "rules", None)
    if rules is None:
        return ""
    canonical = json.dumps({k: list(v) for k, v in sorted(dict(rules).items())}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def resolve_tagger(option: Any) -> Any | None:
    """``"rules"`` -> the default rule tagger, ``None``/``"none"`` -> no tagging, an object -> itself."""
    if option is None or option == "none":
        return None
    if option == "rules":
        from infra_pl.data.behaviours import default_tagger

        return default_tagger()
    if isinstance(option, str):
        raise ValueError(f"tagger must be 'rules', 'none' or a tagger object (e.g. LLMJudgeTagger), got {option!r}")
    if isinstance(option, Mapping) and "class_path" in option:  # YAML: {class_path, init_args}
        import importlib

        module, _, name = str(option["class_path"]).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"tagger class_path {option['class_path']!r} cannot be imported: {err}") from None
        unknown = set(option) - {"class_path", "init_args"}
        if unknown:
            raise ValueError(f"tagger: unknown keys {sorted(unknown)} next to class_path (use init_args)")
        option = cls(**dict(option.get("init_args") or {}))
    if not callable(getattr(option, "tag", None)):
        raise TypeError(f"tagger {type(option).__name__} has no tag(text, answer) method")
    return option


def assistant_text(example: Mapping[str, Any]) -> str:
    """The last assistant turn of a schema example: the trace that is trained on and tagged."""
    turns = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
    if not turns:
        raise ValueError(f"example {example.get('id', '?')} has no assistant turn to tag")
    return turns[-1]


class TagCache:
    """Tagged traces on disk, one JSON line per (tagger, trace); appended as tagging goes.

    The key hashes the tagger's identity (name and, for rules, the rules themselves), the answer
    and the text, so an edited rule set or a changed trace is tagged anew, never served stale.
    """

    def __init__(self, path: str | Path | None, tagger: Any) -> None:
        self.path = Path(path) if path is not None else None
        self.prefix = f"{tagger_name(tagger)}:{_rules_fingerprint(tagger)}:{getattr(tagger, 'cache_key', '')}"
        self.entries: dict[str, TaggedTrace] = {}
        if self.path is not None and self.path.exists():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self.entries[row["key"]] = TaggedTrace(tuple((s, e, tuple(labels)) for s, e, labels in row["spans"]))
                except (ValueError, KeyError, TypeError):
                    # A line cut by an interrupted write: the trace is simply tagged again.
                    print(f"[infra-pl] {self.path}, line {number}: unreadable cache entry, re-tagging it", file=sys.stderr)

    def key(self, text: str, answer: str | None) -> str:
        digest = hashlib.sha256(f"{self.prefix}\x00{answer or ''}\x00{text}".encode("utf-8")).hexdigest()
        return digest[:32]

    def get(self, text: str, answer: str | None) -> TaggedTrace | None:
        return self.entries.get(self.key(text, answer))

    def put_many(self, items: Sequence[tuple[str, str | None, TaggedTrace]]) -> None:
        lines = []
        for text, answer, trace in items:
            key = self.key(text, answer)
            self.entries[key] = trace
            lines.append(json.dumps({"key": key, "spans": [[s, e, list(labels)] for s, e, labels in trace.spans]}))
        if self.path is not None and lines:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")


def _label_batch(tagger: Any, texts: Sequence[str]) -> list[TaggedTrace]:
    """A judge with ``label_many`` asks for a whole chunk at once (its own concurrency and cache);
    any failed trace stops the run with the judge's counted summary, after the rest were cached."""
    from infra_pl.data.sentences import split_sentences

    run = tagger.label_many(list(texts))
    run.raise_for_failures()
    traces = []
    for text, labels in zip(texts, run.labels):
        sentences = split_sentences(text)
        traces.append(TaggedTrace.from_tagged(zip(sentences, labels)))
    return traces


def _tag_one(args: tuple[Any, str, str | None]) -> TaggedTrace:
    tagger, text, answer = args
    return TaggedTrace.from_tagged(tagger.tag(text, answer))


def tag_examples(
    examples: Sequence[Mapping[str, Any]],
    tagger: Any,
    cache_path: str | Path | None = None,
    workers: int = 1,
    flush_every: int = 256,
    log_every_s: float = 30.0,
) -> list[TaggedTrace]:
    """The tagged last assistant turn of every example, from the cache where possible.

    New results are appended to the cache every ``flush_every`` traces, so an interrupted run
    keeps what it tagged. ``workers`` > 1 tags in processes (rule tagger: ~0.1 s per long trace).
    """
    cache = TagCache(cache_path, tagger)
    jobs = [(assistant_text(e), e.get("answer")) for e in examples]
    todo = [k for k, (text, answer) in enumerate(jobs) if cache.get(text, answer) is None]
    if todo:
        name = tagger_name(tagger)
        print(f"[infra-pl] behaviours: tagging {len(todo)} of {len(jobs)} traces with '{name}'"
              f" ({len(jobs) - len(todo)} cached)", file=sys.stderr)
        started = last_log = time.monotonic()
        for begin in range(0, len(todo), flush_every):
            chunk = todo[begin : begin + flush_every]
            args = [(tagger, *jobs[k]) for k in chunk]
            if callable(getattr(tagger, "label_many", None)):
                traces = _label_batch(tagger, [jobs[k][0] for k in chunk])
            elif workers > 1 and len(args) > 1:
                from concurrent.futures import ProcessPoolExecutor

                with ProcessPoolExecutor(max_workers=workers) as pool:
                    traces = list(pool.map(_tag_one, args, chunksize=max(1, len(args) // (4 * workers))))
            else:
                traces = [_tag_one(a) for a in args]
            cache.put_many([(jobs[k][0], jobs[k][1], trace) for k, trace in zip(chunk, traces)])
            now = time.monotonic()
            if now - last_log >= log_every_s:
                done = begin + len(chunk)
                print(f"[infra-pl] behaviours: {done}/{len(todo)} traces tagged ({now - started:.0f} s)", file=sys.stderr)
                last_log = now
    return [cache.get(text, answer) for text, answer in jobs]  # type: ignore[misc]


def agreement(first: Sequence[TaggedTrace], second: Sequence[TaggedTrace]) -> dict[str, float]:
    """Cohen's kappa per behaviour between two taggers' sentence labels of the same traces.

    Sentences are matched by character span (both taggers split with ``split_sentences``); only
    sentences that either tagger labelled anything or that both saw count, so kappa is over the
    same units for both.
    """
    from infra_pl.data.llm_judge import cohen_kappa

    labels_a: list[tuple[str, ...]] = []
    labels_b: list[tuple[str, ...]] = []
    for a, b in zip(first, second, strict=True):
        spans_b = {(s, e): labels for s, e, labels in b.spans}
        for s, e, labels in a.spans:
            if (s, e) in spans_b:
                labels_a.append(labels)
                labels_b.append(spans_b[(s, e)])
    return cohen_kappa(labels_a, labels_b)


def sentence_labels(trace: TaggedTrace, sentences: Sequence[Sentence]) -> list[list[str]]:
    """Labels of each scored sentence, from the tagged whole trace, matched by character offsets.

    Both sides split the same text with the same splitter, so spans normally coincide; a scored
    sentence that only overlaps tagged ones (a different splitter) takes the union of their labels.
    """
    exact = {(s, e): labels for s, e, labels in trace.spans}
    out = []
    for sentence in sentences:
        labels = exact.get((sentence.start, sentence.end))
        if labels is None:
            found: set[str] = set()
            for s, e, tagged in trace.spans:
                if s < sentence.end and sentence.start < e:
                    found.update(tagged)
            labels = tuple(sorted(found))
        out.append(list(labels))
    return out
