"""Tests for stdin/stdout and call-based coding tasks, written as our sandbox's test statements.

The code sandbox (``infra_pl.eval.sandbox.check_code``) runs ``test_setup_code``, then the
generated program, then each test as a Python statement in the same namespace. MBPP-style tasks
already have ``assert f(x) == y`` statements. Competitive-programming tasks (LiveCodeBench,
APPS/TACO in OpenThoughts) instead give input/output pairs. The convention here:

* ``test_setup_code`` is :data:`HARNESS` plus ``_stdio_feed(<first input>)``: it defines two
  helpers and gives the program's own first run a real stdin, so a script that reads input at
  top level (or calls ``main()`` unguarded) does not fail before the tests start.
* stdin tasks: each test is ``check_stdio(<input>, <expected output>)``. It re-runs the *whole
  program* as ``__main__`` with that stdin and captured stdout (exactly how a judge runs a
  submission; an ``if __name__ == "__main__":`` block runs too), then compares outputs line by
  line, whitespace-insensitively, with a 1e-6 tolerance for numbers. The program source is
  read from the sandbox's ``<program>`` linecache entry; if it is not there (another
  executor), ``main()`` is called instead.
* call-based tasks: each test is ``check_call(<function>, <args>, <expected>)``, e.g.
  ``check_call(Solution().twoSum, [[2, 7], 9], [0, 1])``; tuples compare equal to lists, and
  with ``wrapped=True`` an APPS-style ``[result]`` expectation is accepted too.

Known limit: a program that calls ``exit()`` during its first (namespace-loading) run ends the
check before the tests; a sandbox-level stdin mode would remove it.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

HARNESS = r'''
import io as _stdio_io
import linecache as _stdio_linecache
import sys as _stdio_sys


def _stdio_stream(text):
    return _stdio_io.TextIOWrapper(_stdio_io.BytesIO(text.encode("utf-8")), encoding="utf-8")


def _stdio_feed(text):
    _stdio_sys.stdin = _stdio_stream(text)


def run_stdio(stdin_text):
    """Run the program as __main__ with ``stdin_text``; return what it printed."""
    source = "".join(_stdio_linecache.getlines("<program>"))
    buffer = _stdio_io.BytesIO()
    out = _stdio_io.TextIOWrapper(buffer, encoding="utf-8")
    saved = _stdio_sys.stdin, _stdio_sys.stdout
    _stdio_sys.stdin, _stdio_sys.stdout = _stdio_stream(stdin_text), out
    try:
        if source:
            namespace = {"__name__": "__main__", "__builtins__": __builtins__,
                         "exit": _stdio_sys.exit, "quit": _stdio_sys.exit}
            exec(compile(source, "<program>", "exec"), namespace)
        else:
            main()  # noqa: F821 - defined by the program when no source is available
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise AssertionError("program exited with status %r" % (exc.code,))
    finally:
        out.flush()
        _stdio_sys.stdin, _stdio_sys.stdout = saved
    return buffer.getvalue().decode("utf-8", "replace")


def _stdio_lines(text):
    lines = [line.split() for line in text.strip().splitlines()]
    return [line for line in lines if line]


def _stdio_token_equal(a, b):
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return abs(x - y) <= 1e-6 * max(1.0, abs(y))


def _stdio_same(got, expected):
    g, e = _stdio_lines(got), _stdio_lines(expected)
    return len(g) == len(e) and all(
        len(gl) == len(el) and all(_stdio_token_equal(a, b) for a, b in zip(gl, el)) for gl, el in zip(g, e)
    )


def check_stdio(stdin_text, expected):
    got = run_stdio(stdin_text)
    if not _stdio_same(got, expected):
        raise AssertionError("input %r: expected %r, got %r" % (stdin_text[:200], expected[:200], got[:200]))


def _stdio_plain(value):
    if isinstance(value, (list, tuple)):
        return [_stdio_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _stdio_plain(v) for k, v in value.items()}
    return value


def _stdio_value_equal(a, b):
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_stdio_value_equal(x, y) for x, y in zip(a, b))
    return a == b


def check_call(fn, args, expected, wrapped=False):
    got = _stdio_plain(fn(*args))
    if _stdio_value_equal(got, expected) or (wrapped and _stdio_value_equal([got], expected)):
        return
    raise AssertionError("args %r: expected %r, got %r" % (args, expected, got))
'''

# Imports a LeetCode-style starter (``List[int]`` annotations, collections...) assumes.
CALL_PRELUDE = (
    "from typing import *\n"
    "import collections, heapq, bisect, itertools, functools, math, string, re\n"
    "from collections import *\n"
)


def stdio_setup(inputs: Sequence[str]) -> str:
    """``test_setup_code`` for a stdin task whose first test input is ``inputs[0]``."""
    first = inputs[0] if inputs else ""
    return HARNESS + f"\n_stdio_feed({first!r})\n"


def call_setup() -> str:
    return CALL_PRELUDE + HARNESS


def stdio_test(stdin_text: str, expected: str) -> str:
    return f"check_stdio({stdin_text!r}, {expected!r})"


def call_test(function: str, args: Sequence[Any], expected: Any, wrapped: bool = False) -> str:
    """``function`` is an expression such as ``Solution().twoSum`` or ``solve``."""
    suffix = ", wrapped=True" if wrapped else ""
    return f"check_call({function}, {list(args)!r}, {expected!r}{suffix})"


def as_text(value: Any) -> str:
    """APPS/TACO inputs and outputs are strings, or lists of lines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    return str(value)


def function_expression(name: str, starter_code: str | None) -> str:
    """How to call ``name``: as a method of ``Solution`` when the starter code defines that class."""
    if starter_code and "class Solution" in starter_code:
        return f"Solution().{name}"
    return name


def parse_json_lines(text: str) -> list[Any]:
    """LiveCodeBench functional inputs: one JSON value per line."""
    return [json.loads(line) for line in text.split("\n") if line.strip()]
