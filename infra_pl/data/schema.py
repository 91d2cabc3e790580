"""The one example schema every data source is mapped into.

Why one schema: attribution joins scores back to examples by ``id`` and groups them by
``domain`` / ``category`` / ``difficulty`` / ``behaviours``. If each adapter produced its own
shape, every downstream table would need per-source special cases.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

DOMAINS = ("math", "code")
ROLES = ("system", "user", "assistant")
BEHAVIOURS = ("verification", "exploration", "backtracking", "subgoal_setting", "backward_chaining")


class DataError(ValueError):
    """A data problem with enough context (file, row, field) for the user to fix it."""


@dataclass(frozen=True)
class RowLocation:
    """Where a row came from, so error messages can point at it."""

    file: str
    row: int  # 1-based line / row number

    def __str__(self) -> str:
        return f"{self.file}, row {self.row}"


def content_id(messages: list[Mapping[str, str]], domain: str, source: str) -> str:
    """Stable id from the example's content.

    Why a content hash rather than a row index: ids must survive reordering, resampling
    (difficulty flip) and re-generation, so scores computed on one run can be joined to the
    same example in another.
    """
    canonical = json.dumps(
        {"domain": domain, "source": source, "messages": [[m["role"], m["content"]] for m in messages]},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _fail(where: RowLocation | None, field: str, problem: str) -> DataError:
    prefix = f"{where}: " if where is not None else ""
    return DataError(f"{prefix}field '{field}' {problem}")


REFERENCE_KINDS = ("full", "answer_only", "none")


def _reference_kind(value: Any, where: RowLocation | None) -> str:
    """What the example's assistant turn is: a full solution, only the final answer, or a stand-in.

    Why it matters: the measurement f (Eq. 6) teacher-forces a correct answer; a one-line "The
    answer is 7" or a stand-in comment (LiveCodeBench ships no solutions) is not one.
    """
    kind = "full" if value is None else str(value)
    if kind not in REFERENCE_KINDS:
        raise _fail(where, "reference_kind", f"must be one of {REFERENCE_KINDS}, got {value!r}")
    return kind


def validate_example(raw: Mapping[str, Any], where: RowLocation | None = None) -> dict[str, Any]:
    """Check one record against the schema and return a normalised copy with an ``id``.

    Raises :class:`DataError` naming the file, row and field of the first problem found.
    """
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    for field in ("domain", "messages"):
        if field not in raw or raw[field] in (None, ""):
            raise _fail(where, field, "is missing")
    domain = raw["domain"]
    if domain not in DOMAINS:
        raise _fail(where, "domain", f"must be one of {DOMAINS}, got {domain!r}")
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise _fail(where, "messages", "must be a non-empty list of {role, content} objects")
    clean_messages: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise _fail(where, f"messages[{i}]", "must be an object with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise _fail(where, f"messages[{i}].role", f"must be one of {ROLES}, got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise _fail(where, f"messages[{i}].content", "must be a string")
        clean_messages.append({"role": message["role"], "content": message["content"]})
    roles = [m["role"] for m in clean_messages]
    if "user" not in roles:
        raise _fail(where, "messages", "has no user turn")
    if roles[-1] != "assistant" or not clean_messages[-1]["content"].strip():
        raise _fail(where, "messages", "must end with a non-empty assistant turn")
    difficulty = raw.get("difficulty")
    if difficulty is not None:
        try:
            difficulty = int(difficulty)
        except (TypeError, ValueError):
            raise _fail(where, "difficulty", f"must be an integer level or null, got {difficulty!r}") from None
    source = str(raw.get("source") or "local")
    behaviours = raw.get("behaviours")
    if behaviours is not None and not isinstance(behaviours, Mapping):
        raise _fail(where, "behaviours", "must be an object of counts per behaviour")
    unknown = set(behaviours or {}) - set(BEHAVIOURS)
    if unknown:
        raise _fail(where, "behaviours", f"has unknown behaviour(s) {sorted(unknown)}; known: {BEHAVIOURS}")
    tests = raw.get("tests")
    if tests is not None and (not isinstance(tests, list) or not all(isinstance(t, str) for t in tests)):
        raise _fail(where, "tests", "must be a list of strings")
    example: dict[str, Any] = {
        "id": str(raw.get("id") or content_id(clean_messages, domain, source)),
        "domain": domain,
        "source": source,
        "category": str(raw.get("category") or "unknown"),
        "difficulty": difficulty,
        "messages": clean_messages,
        "answer": None if raw.get("answer") is None else str(raw["answer"]),
        "tests": list(tests) if tests else None,
        "entry_point": raw.get("entry_point"),
        "test_setup_code": raw.get("test_setup_code") or "",
        # None = never tagged (real datasets): attribution tags the traces; zeros would claim "no behaviour".
        "behaviours": None if behaviours is None else {b: int(behaviours.get(b, 0)) for b in BEHAVIOURS},
        "reference_kind": _reference_kind(raw.get("reference_kind"), where),
    }
    if raw.get("difficulty_source") is not None:  # which signal gave the level (infra_pl.data.difficulty)
        example["difficulty_source"] = str(raw["difficulty_source"])
    if "sentence_labels" in raw:
        example["sentence_labels"] = raw["sentence_labels"]
    return example


def validate_examples(rows: Iterable[tuple[int, Mapping[str, Any]]], file: str) -> list[dict[str, Any]]:
    """Validate ``(row_number, row)`` pairs; duplicated ids are errors because they break score joins."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for row_number, raw in rows:
        example = validate_example(raw, RowLocation(file, row_number))
        if example["id"] in seen:
            raise DataError(
                f"{file}, row {row_number}: duplicate example id {example['id']} "
                f"(same content as row {seen[example['id']]})"
            )
        seen[example["id"]] = row_number
        out.append(example)
    return out
