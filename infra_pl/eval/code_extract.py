"""Pull the final program out of a generated code-reasoning answer.

Generations mix prose, draft snippets, example I/O and the final solution.  What
gets executed must be chosen by one explicit rule so pass@k numbers are
comparable across runs; this module is that rule.
"""

from __future__ import annotations

import re
import textwrap

__all__ = ["extract_code"]

# ```lang ... ``` with the info string captured; non-greedy body so consecutive
# blocks stay separate.  The closing fence may be indented (fences inside lists).
_FENCE_RE = re.compile(r"```[ \t]*(?P<lang>[^\n`]*)\n(?P<body>.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "python3", "py", "py3"}
_BEGIN_SOLUTION = "<|begin_of_solution|>"
_END_SOLUTION = "<|end_of_solution|>"


def _clean(block: str) -> str | None:
    code = textwrap.dedent(block).strip("\n")
    return code if code.strip() else None


def extract_code(text: str) -> str | None:
    """Return the program in ``text``, or ``None`` if there is none.

    Rules, first match wins:

    1. the last fenced block tagged ``python``/``py``; models often follow the
       solution with an untagged block of example output, so a tagged block
       outranks untagged ones even when it comes earlier;
    2. the last untagged fenced block (blocks tagged with another language,
       e.g. ``bash``, are never returned);
    3. the text between the last ``<|begin_of_solution|>`` and the following
       ``<|end_of_solution|>`` (or the end of the text), if it looks like code
       (contains ``"def "``), for reasoning-style data that puts bare code there.
    """
    if not text:
        return None
    tagged: list[str] = []
    untagged: list[str] = []
    for match in _FENCE_RE.finditer(text):
        lang = match.group("lang").strip().lower()
        if lang in _PYTHON_TAGS:
            tagged.append(match.group("body"))
        elif not lang:
            untagged.append(match.group("body"))
    for blocks in (tagged, untagged):
        for block in reversed(blocks):
            code = _clean(block)
            if code is not None:
                return code

    start = text.rfind(_BEGIN_SOLUTION)
    if start >= 0:
        section = text[start + len(_BEGIN_SOLUTION) :]
        end = section.find(_END_SOLUTION)
        if end >= 0:
            section = section[:end]
        if "def " in section:
            return _clean(section)
    return None
