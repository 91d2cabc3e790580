"""D_correct: the correctly answered evaluation items the measurement f is defined on (Eq. 6).

f = mean over D_correct of log p(reference answer | prompt), one f per evaluation domain. The
set is drawn from the per-example correctness written by ``validate``; when too few items are
correct the run stops, unless the user chose the labelled ``reference`` fallback (all evaluation
items, teacher-forced reference answers), which every output then names.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence


class TooFewCorrectError(RuntimeError):
    """Not enough correctly answered items to define a measurement."""


@dataclass
class MeasurementSet:
    """The evaluation items of one measurement (an evaluation domain)."""

    name: str
    indices: list[int]  # positions in the datamodule's eval_examples
    ids: list[str]
    n_available: int  # correctly answered items that were available
    n_used: int
    fallback: str | None  # None, or "reference" when the fallback replaced D_correct

    def info(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("indices")
        data.pop("ids")
        return data


def read_correctness(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a correctness file written by ``validate`` (JSONL)."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, row {line_number}: malformed JSON ({err.msg})") from None
            for field in ("id", "domain", "correct"):
                if field not in row:
                    raise ValueError(f"{path}, row {line_number}: field '{field}' is missing")
            rows.append(row)
    return rows


def latest_correctness_file(root: str | Path) -> Path | None:
    """The newest ``correctness.jsonl`` under a run folder (validate writes one per logger version)."""
    candidates = sorted(Path(root).rglob("correctness.jsonl"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def select_measurement_sets(
    eval_examples: Sequence[Mapping[str, Any]],
    correctness: Iterable[Mapping[str, Any]] | None,
    n: int = 100,
    min_correct: int = 10,
    seed: int = 0,
    fallback: str | None = None,
) -> dict[str, MeasurementSet]:
    """One measurement set per evaluation domain: n random correct items (or all if fewer).

    ``fallback="reference"`` uses all evaluation items of a domain (teacher-forced reference
    answers) when fewer than ``min_correct`` are correct; without it that case is an error.
    """
    if fallback not in (None, "reference"):
        raise ValueError(f"fallback must be null or 'reference', got {fallback!r}")
    position = {example["id"]: i for i, example in enumerate(eval_examples)}
    correct_by_domain: dict[str, list[int]] = {}
    all_by_domain: dict[str, list[int]] = {}
    for i, example in enumerate(eval_examples):
        all_by_domain.setdefault(example["domain"], []).append(i)
        correct_by_domain.setdefault(example["domain"], [])
    for row in correctness or []:
        if row.get("correct") and row["id"] in position:
            correct_by_domain[eval_examples[position[row["id"]]]["domain"]].append(position[row["id"]])
    sets: dict[str, MeasurementSet] = {}
    problems = []
    for domain in sorted(all_by_domain):
        available = sorted(set(correct_by_domain[domain]))
        if len(available) >= min_correct:
            chosen = sorted(random.Random(f"{seed}:{domain}").sample(available, min(n, len(available))))
            sets[domain] = _make(domain, chosen, eval_examples, len(available), None)
        elif fallback == "reference":
            sets[domain] = _make(domain, all_by_domain[domain], eval_examples, len(available), "reference")
        else:
            problems.append(f"{domain}: {len(available)} correct of {len(all_by_domain[domain])}")
    if problems:
        raise TooFewCorrectError(
            f"too few correctly answered evaluation items (minimum {min_correct}) for: {'; '.join(problems)}. "
            "Train longer, lower min_correct, or set fallback: reference to measure on the reference answers "
            "of all evaluation items (labelled as such in every output)."
        )
    return sets


def _make(domain: str, indices: list[int], eval_examples: Sequence[Mapping[str, Any]], available: int, fallback: str | None) -> MeasurementSet:
    return MeasurementSet(
        name=domain,
        indices=list(indices),
        ids=[eval_examples[i]["id"] for i in indices],
        n_available=available,
        n_used=len(indices),
        fallback=fallback,
    )
