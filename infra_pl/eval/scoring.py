"""Decide whether a generated answer is correct: math by answer matching, code by running tests.

Correctness decides which evaluation items enter D_correct, the set the influence measurement
is defined on (paper Eq. 6), so every verdict is written out with the reason behind it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from infra_pl.eval.code_extract import extract_code
from infra_pl.eval.math_answer import answers_match, extract_answer
from infra_pl.eval.sandbox import SandboxLimits, check_many


@dataclass
class Verdict:
    id: str
    domain: str
    category: str
    difficulty: int | None
    correct: bool
    status: str  # "correct", "wrong_answer", "no_answer", "no_code", or the sandbox status
    extracted: str | None
    generated: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verdict(example: dict[str, Any], generated: str, correct: bool, status: str, extracted: str | None) -> Verdict:
    return Verdict(
        id=example["id"],
        domain=example["domain"],
        category=example["category"],
        difficulty=example["difficulty"],
        correct=correct,
        status=status,
        extracted=extracted,
        generated=generated,
    )


def score_math(example: dict[str, Any], generated: str) -> Verdict:
    if example.get("answer") is None:
        raise ValueError(f"math example {example['id']} has no reference 'answer' to check against")
    predicted = extract_answer(generated)
    if predicted is None:
        return _verdict(example, generated, False, "no_answer", None)
    ok = answers_match(predicted, example["answer"])
    return _verdict(example, generated, ok, "correct" if ok else "wrong_answer", predicted)


def score_generations(
    examples: Sequence[dict[str, Any]],
    generations: Sequence[str],
    limits: SandboxLimits | None = None,
    workers: int = 2,
) -> list[Verdict]:
    """Verdicts in input order; code items run in the sandbox, several at a time."""
    limits = limits or SandboxLimits()
    verdicts: list[Verdict | None] = [None] * len(examples)
    code_jobs: list[tuple[int, str]] = []
    for i, (example, generated) in enumerate(zip(examples, generations, strict=True)):
        if example["domain"] == "math":
            verdicts[i] = score_math(example, generated)
            continue
        if not example.get("tests"):
            raise ValueError(f"code example {example['id']} has no 'tests' to run")
        program = extract_code(generated)
        if program is None:
            verdicts[i] = _verdict(example, generated, False, "no_code", None)
        else:
            code_jobs.append((i, program))
    if code_jobs:
        jobs = [(program, examples[i]["tests"], examples[i].get("test_setup_code") or "") for i, program in code_jobs]
        for (i, program), result in zip(code_jobs, check_many(jobs, limits=limits, workers=workers), strict=True):
            status = "correct" if result.passed else result.status
            verdicts[i] = _verdict(examples[i], generations[i], result.passed, status, program)
    return [v for v in verdicts if v is not None]
