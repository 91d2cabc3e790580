"""Adapters for the paper's evaluation sets (GSM8K, MBPP, MATH / MATH-500, AIME, LiveCodeBench).

An evaluation example needs what scoring checks (a math ``answer``, or code ``tests`` our sandbox
runs) and a reference assistant turn (the schema requires one; validation also reports its
teacher-forced loss). Where a benchmark ships no reference solution (LiveCodeBench; AIME sets
without solutions) the assistant turn is a short stand-in, said so in each adapter's docstring.

==============  =====================================================  ==========================
adapter         hub dataset (columns used)                             checked by
==============  =====================================================  ==========================
gsm8k           openai/gsm8k ``main`` (question, answer "... #### 72")  answer
mbpp            google-research-datasets/mbpp ``full`` (text, code,     tests (assert statements)
                test_list, test_setup_code, challenge_test_list) and
                ``sanitized`` (prompt, code, test_imports, test_list)
math            MATH (problem, solution, level "Level 3", type) and     answer (``answer`` column,
                MATH-500 (problem, solution, answer, subject, level)    else the last \\boxed)
aime            AIME 2024/2025 sets (problem|Problem|question,          answer
                answer|Answer, id|ID, solution|Solution optional)
livecodebench   livecodebench/code_generation_lite (question_content,   tests (stdin or call-based,
                public/private_test_cases, difficulty, starter_code,    see stdio_tests)
                metadata, platform)
==============  =====================================================  ==========================
"""

from __future__ import annotations

import ast
import base64
import io
import json
import pickle
import re
import zlib
from typing import Any, Mapping

from infra_pl.data.adapter_base import JOIN_KEY, SYSTEM_PRESETS, AdapterContext, RowProblem, chat, register, require
from infra_pl.data.difficulty import parse_level
from infra_pl.data.schema import RowLocation
from infra_pl.data.stdio_tests import (
    call_setup,
    call_test,
    function_expression,
    parse_json_lines,
    stdio_setup,
    stdio_test,
)

__all__ = ["decode_lcb_tests", "mbpp_entry_point"]


def _math_system(ctx: AdapterContext) -> str | None:
    return ctx.system(SYSTEM_PRESETS["@short_math"])


def _code_system(ctx: AdapterContext) -> str | None:
    return ctx.system(SYSTEM_PRESETS["@short_code"])


def _fill(template: str, problem: str) -> str:
    """``{problem}`` substitution by replacement (prompts contain LaTeX braces)."""
    return template.replace("{problem}", problem)


# ------------------------------------------------------------------------------------- GSM8K

_GSM_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
_GSM_CALCULATOR = re.compile(r"<<[^<>]*>>")


@register("gsm8k", {"strip_calculator": True, "prompt": "{problem}"})
def gsm8k(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """GSM8K: the reference is the worked answer with ``<<48/2=24>>`` calculator notes removed
    (``strip_calculator``) and ``#### 72`` rewritten as "The answer is: 72" (MetaMathQA's form)."""
    question, worked = require(row, "question"), require(row, "answer")
    match = _GSM_FINAL.search(worked)
    final = match.group(1).replace(",", "").strip() if match else ""
    if not final:
        raise RowProblem("empty answer", "field 'answer' has no final '#### <answer>' line")
    reasoning = worked[: match.start()].rstrip()
    if ctx.option("strip_calculator"):
        reasoning = _GSM_CALCULATOR.sub("", reasoning)
    return {
        "domain": "math",
        "category": "gsm8k",
        "messages": chat(_math_system(ctx), _fill(ctx.option("prompt"), question), f"{reasoning}\nThe answer is: {final}"),
        "answer": final,
    }


# -------------------------------------------------------------------------------------- MBPP


# HumanEval-style tests: ``def check(candidate): assert candidate(...) == ...`` then ``check(name)``.
_CANDIDATE_CALL = re.compile(r"\bcandidate\s*\(")
_CHECK_CALL = re.compile(r"\bcheck\s*\(\s*(?:candidate\s*=\s*)?([A-Za-z_]\w*)\s*\)")


def mbpp_entry_point(code: str, tests: list[str], named: str | None = None) -> str | None:
    """The function the tests call.

    * ``named`` (a row's own ``entry_point`` column, as HumanEval rows have) wins;
    * HumanEval-style tests, which call ``candidate(...)`` and never the function by name: the
      function passed to ``check(<name>)`` if the tests make that call, else the last top-level
      ``def`` of ``code`` (HumanEval solutions define their helpers before the entry point);
    * otherwise (MBPP asserts): the first function defined in ``code`` whose call appears in the tests.
    """
    if isinstance(named, str) and named.strip():
        return named.strip()
    try:
        tree = ast.parse(code)
        functions = (ast.FunctionDef, ast.AsyncFunctionDef)
        names = [n.name for n in ast.walk(tree) if isinstance(n, functions)]
        top_level = [n.name for n in tree.body if isinstance(n, functions)]
    except SyntaxError:
        names = top_level = re.findall(r"^(?:async\s+)?def\s+(\w+)", code, re.MULTILINE)
    joined = "\n".join(tests)
    if _CANDIDATE_CALL.search(joined):
        checked = [m.group(1) for m in _CHECK_CALL.finditer(joined) if m.group(1) != "candidate"]
        if checked:
            return checked[-1]
        if top_level:
            return top_level[-1]
    for name in names:
        if re.search(rf"\b{re.escape(name)}\s*\(", joined):
            return name
    return names[0] if names else None


@register("mbpp", {"show_tests": True, "challenge_tests": False})
def mbpp(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """MBPP ``full`` or ``sanitized``: the tests are the ``assert`` lines of ``test_list``.

    ``show_tests`` (default on, as in the MBPP paper's prompt) lists them in the prompt, which is
    how the model learns the expected function name and signature; ``challenge_tests`` adds the
    ``challenge_test_list`` of the full config to the tests.
    """
    text = require(row, "text", "prompt")
    code = str(require(row, "code")).replace("\r\n", "\n").strip()
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise RowProblem("missing tests", "field 'test_list' must be a non-empty list of assert statements")
    tests = [t.strip() for t in tests]
    if ctx.option("challenge_tests"):
        tests += [t.strip() for t in row.get("challenge_test_list") or [] if isinstance(t, str) and t.strip()]
    setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
    user = text.strip()
    if ctx.option("show_tests"):
        user += "\nYour code should pass these tests:\n" + "\n".join(t for t in row["test_list"])
    return {
        "domain": "code",
        "category": "mbpp",
        "messages": chat(_code_system(ctx), user, f"```python\n{code}\n```"),
        "tests": tests,
        "test_setup_code": setup,
        "entry_point": mbpp_entry_point(code, tests, row.get("entry_point")),
    }


# -------------------------------------------------------------------------------------- MATH


@register("math", {"prompt": "{problem}"})
def hendrycks_math(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """MATH / MATH-500: level from ``level`` ("Level 3" or 3; "Level ?" -> none), category from
    ``type`` (MATH) or ``subject`` (MATH-500), answer from ``answer`` or the solution's last \\boxed."""
    problem, solution = require(row, "problem"), require(row, "solution")
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        from infra_pl.eval.math_answer import extract_answer

        answer = extract_answer(solution)
    if not answer:
        raise RowProblem("empty answer", "no field 'answer' and no \\boxed{} answer in field 'solution'")
    try:
        level = parse_level(row.get("level"))
    except ValueError as err:
        raise RowProblem("bad level", f"field 'level': {err}") from None
    return {
        "domain": "math",
        "category": str(row.get("type") or row.get("subject") or "math"),
        "difficulty": level,
        "difficulty_source": "math_level" if level is not None else None,
        "messages": chat(_math_system(ctx), _fill(ctx.option("prompt"), problem), solution),
        "answer": str(answer).strip(),
        JOIN_KEY: problem,
    }


# -------------------------------------------------------------------------------------- AIME

_YEAR = re.compile(r"(19|20)\d\d")


@register("aime", {"prompt": "{problem}"})
def aime(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """AIME 2024 / 2025 in their common hub layouts; the category is ``aime<year>`` when the id
    (e.g. ``2024-I-1``) or a ``year`` column names it. Without a solution column the reference
    turn is just the boxed answer."""
    problem = require(row, "problem", "Problem", "question")
    answer = str(require(row, "answer", "Answer")).strip()
    if re.fullmatch(r"\d+", answer):
        answer = str(int(answer))  # "033" and "33" are the same AIME answer
    ident = str(row.get("id", row.get("ID", "")) or "")
    year = _YEAR.search(f"{row.get('year', '')} {ident}")
    solution = row.get("solution") or row.get("Solution")
    reference = str(solution).strip() if solution and str(solution).strip() else f"The answer is \\boxed{{{answer}}}."
    return {
        "domain": "math",
        "category": f"aime{year.group(0)}" if year else "aime",
        "messages": chat(_math_system(ctx), _fill(ctx.option("prompt"), problem), reference),
        "answer": answer,
        "reference_kind": "full" if solution and str(solution).strip() else "answer_only",
        JOIN_KEY: problem,
    }


# ----------------------------------------------------------------------------- LiveCodeBench


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain data (str, list, dict, numbers): no class can be loaded."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: ARG002
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from test data")


def decode_lcb_tests(value: Any) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a JSON list, or (private tests) base64 of zlib of a pickled JSON string.

    The pickle holds a plain string, so it is read with an unpickler that refuses every class:
    test data from a hub can never execute code while being loaded.
    """
    if value in (None, ""):
        return []
    if isinstance(value, list):
        return value
    text = str(value)
    try:
        cases = json.loads(text)
    except json.JSONDecodeError:
        try:
            raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=False))
            cases = _PlainUnpickler(io.BytesIO(raw)).load()
            cases = json.loads(cases) if isinstance(cases, (str, bytes)) else cases
        except Exception as err:  # noqa: BLE001 - any decoding failure means the same thing
            raise ValueError(f"neither JSON nor LiveCodeBench's compressed encoding ({type(err).__name__})") from None
    if not isinstance(cases, list) or not all(isinstance(c, Mapping) and {"input", "output"} <= set(c) for c in cases):
        raise ValueError("expected a list of {input, output, testtype} objects")
    return cases


_LCB_STDIN = (
    "\n\nRead the input from standard input and write the answer to standard output. "
    "Give the complete Python program in one ```python code block."
)
_LCB_CALL = "\n\nComplete the following Python code and give the whole of it in one ```python code block:\n```python\n{starter}\n```"
_NO_REFERENCE = "```python\n# LiveCodeBench ships no reference solution; this stand-in only fills the schema.\n```"


@register("livecodebench", {"private_tests": True, "max_tests": None, "instructions": True})
def livecodebench(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """LiveCodeBench code generation: tests from the public (and, by default, private) cases, as
    ``check_stdio`` or ``check_call`` statements (:mod:`infra_pl.data.stdio_tests`); difficulty
    easy/medium/hard -> 1/2/3; category = ``platform``. LiveCodeBench has no reference solutions,
    so the assistant turn is a stand-in comment (it only enters the validation loss)."""
    content = require(row, "question_content")
    cases: list[dict[str, Any]] = []
    fields = ("public_test_cases", "private_test_cases") if ctx.option("private_tests") else ("public_test_cases",)
    for name in fields:
        try:
            cases += decode_lcb_tests(row.get(name))
        except ValueError as err:
            raise RowProblem("malformed tests", f"field '{name}': {err}") from None
    if not cases:
        raise RowProblem("missing tests", "fields 'public_test_cases'/'private_test_cases' hold no test case")
    kinds = {str(c.get("testtype", "stdin")) for c in cases}
    if len(kinds) != 1 or not kinds <= {"stdin", "functional"}:
        raise RowProblem("malformed tests", f"test cases mix or use unknown testtype(s) {sorted(kinds)}")
    cases = cases[: ctx.option("max_tests") or None]
    starter = str(row.get("starter_code") or "")
    try:
        level = parse_level(row.get("difficulty"))
    except ValueError as err:
        raise RowProblem("bad level", f"field 'difficulty': {err}") from None
    user = content.rstrip()
    if kinds == {"functional"}:
        name = _lcb_function_name(row, starter)
        call = function_expression(name, starter)
        try:
            tests = [call_test(call, parse_json_lines(c["input"]), json.loads(c["output"])) for c in cases]
        except json.JSONDecodeError as err:
            raise RowProblem("malformed tests", f"functional test input/output is not JSON ({err.msg})") from None
        setup, entry = call_setup(), name
        if ctx.option("instructions"):
            user += _LCB_CALL.replace("{starter}", starter.rstrip())
    else:
        tests = [stdio_test(c["input"], c["output"]) for c in cases]
        setup, entry = stdio_setup([c["input"] for c in cases]), None
        if ctx.option("instructions"):
            user += _LCB_STDIN
    return {
        "domain": "code",
        "category": str(row.get("platform") or "livecodebench"),
        "difficulty": level,
        "difficulty_source": "livecodebench" if level is not None else None,
        "messages": chat(_code_system(ctx), user, _NO_REFERENCE),
        "reference_kind": "none",  # a stand-in: never a measurement target (infra_pl.measurements)
        "tests": tests,
        "test_setup_code": setup,
        "entry_point": entry,
        JOIN_KEY: content,
    }


def _lcb_function_name(row: Mapping[str, Any], starter: str) -> str:
    metadata = row.get("metadata")
    if isinstance(metadata, str) and metadata.strip():
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            raise RowProblem("malformed tests", "field 'metadata' is not JSON") from None
    if isinstance(metadata, Mapping) and metadata.get("func_name"):
        return str(metadata["func_name"])
    match = re.search(r"def\s+(\w+)\s*\(\s*self", starter) or re.search(r"def\s+(\w+)\s*\(", starter)
    if not match:
        raise RowProblem("missing tests", "functional tests but no 'metadata.func_name' and no function in 'starter_code'")
    return match.group(1)
