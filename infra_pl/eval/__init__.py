"""Evaluation helpers: answer extraction/matching for math, code extraction, and a sandbox for running generated code."""

from infra_pl.eval.code_extract import extract_code
from infra_pl.eval.math_answer import answers_match, extract_answer, normalize_answer
from infra_pl.eval.sandbox import (
    STATUSES,
    SandboxError,
    SandboxIsolation,
    SandboxLimits,
    SandboxResult,
    check_code,
    check_many,
    find_interpreter,
    run_python,
    sandbox_isolation,
)

__all__ = [
    "STATUSES",
    "SandboxError",
    "SandboxIsolation",
    "SandboxLimits",
    "SandboxResult",
    "answers_match",
    "check_code",
    "check_many",
    "extract_answer",
    "extract_code",
    "find_interpreter",
    "normalize_answer",
    "run_python",
    "sandbox_isolation",
]
