"""Extract and compare final answers of generated math solutions.

Exact-match accuracy on math benchmarks is only meaningful if "what the model
answered" is read the same way for every sample and if superficial formatting
(``\\dfrac`` vs ``/``, ``1,000`` vs ``1000``, ``3.0`` vs ``3``) does not count as
a wrong answer.  This module keeps that logic in one place:

* :func:`extract_answer` finds the final answer in free-form model output
  (``\\boxed{...}``, MetaMathQA's "The answer is: X", GSM8K's ``#### X``).
* :func:`normalize_answer` maps an answer string to a canonical form.
* :func:`answers_match` compares a prediction against a reference, falling back
  to exact numeric comparison so ``\\frac{3}{4}`` matches ``0.75``; a tolerance
  applies only to a decimal that approximates a value it cannot write exactly
  (``0.333333`` vs ``1/3``), never to integers (``2001001`` is not ``2001000``).

Deliberately *not* a computer-algebra system: symbolic equivalence such as
``2\\sqrt{2}`` vs ``\\sqrt{8}`` is not detected.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

__all__ = ["extract_answer", "normalize_answer", "answers_match"]

# --------------------------------------------------------------------------- #
# extraction
# --------------------------------------------------------------------------- #

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)")
# "The answer is: X" / "The final answer is X" (MetaMathQA and many SFT sets).
_ANSWER_IS_RE = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?[ \t]*(?P<ans>[^\n]*)", re.IGNORECASE)
_GSM8K_RE = re.compile(r"####[ \t]*(?P<ans>[^\n]*)")
# A number, optionally with thousands separators and a decimal part.
_NUMBER_IN_TEXT_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def _read_braced(text: str, open_idx: int) -> tuple[str, int] | None:
    """Return (content, index after the closing brace) of the group at ``open_idx``.

    Regexes cannot match balanced braces, and answers like ``\\frac{1}{2}`` nest
    them, so the group is scanned by hand.  ``None`` when the group is never
    closed (e.g. a generation cut off by the token limit).
    """
    assert text[open_idx] == "{"
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            i += 2  # skip escaped characters such as \{ and \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i], i + 1
        i += 1
    return None


def _boxed_contents(text: str) -> list[str]:
    """All complete ``\\boxed{...}`` / ``\\boxed X`` contents, in order of appearance."""
    found: list[str] = []
    for match in _BOXED_RE.finditer(text):
        i = match.end()
        if i < len(text) and (text[i].isalpha()):
            continue  # e.g. "\boxedanswer" is another macro, not \boxed
        while i < len(text) and text[i] in " \t":
            i += 1
        if i >= len(text):
            continue
        if text[i] == "{":
            group = _read_braced(text, i)
            if group is not None:
                found.append(group[0].strip())
        elif match.end() < i:
            # "\boxed 5": the argument is the next whitespace/`$`-delimited token.
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                found.append(token.group(0).rstrip("."))
    return found


def _clean_line_answer(ans: str) -> str:
    """Trim a one-line answer: surrounding markdown/`$`, and the sentence's final period."""
    previous = None
    while ans != previous:
        previous = ans
        ans = ans.strip().strip("*").strip()
        # "The answer is: 1,234." -> "1,234"; "3.5." -> "3.5" (only the *trailing* period goes).
        if ans.endswith("."):
            ans = ans[:-1]
        if len(ans) > 1 and ans.startswith("$") and ans.endswith("$"):
            ans = ans[1:-1]
    return ans


def extract_answer(text: str, fallback_last_number: bool = False) -> str | None:
    """Return the final answer stated in a generated solution, or ``None``.

    Priority (the first rule that finds something wins):

    1. the last complete ``\\boxed{...}`` (nested braces allowed) or ``\\boxed X``;
       several boxed answers usually mean the model revised itself, so the last
       one is the answer it settled on;
    2. the last "The answer is: X" / "The answer is X" (rest of that line,
       trailing period dropped);
    3. the last GSM8K-style ``#### X``;
    4. if ``fallback_last_number`` is true, the last number in the text (off by
       default because it silently turns unanswered samples into guesses).
    """
    if not text:
        return None
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1]
    for pattern in (_ANSWER_IS_RE, _GSM8K_RE):
        matches = [m for m in pattern.finditer(text) if _clean_line_answer(m.group("ans"))]
        if matches:
            return _clean_line_answer(matches[-1].group("ans"))
    if fallback_last_number:
        numbers = _NUMBER_IN_TEXT_RE.findall(text)
        if numbers:
            return numbers[-1]
    return None


# --------------------------------------------------------------------------- #
# normalisation
# --------------------------------------------------------------------------- #

# \text-like macros whose *content* is the answer ("\text{(B)}", "5\text{ cm}").
_TEXT_MACROS = ("\\text", "\\textbf", "\\textit", "\\mathrm", "\\mathbf", "\\mbox", "\\operatorname")
# Plain-number syntax accepted by the numeric canonicaliser.
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")
_SIMPLE_FRACTION_RE = re.compile(r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+))/(?P<den>[-+]?(?:\d+(?:\.\d*)?|\.\d+))")
# "<number> <unit words>": "5 dollars", "90 degrees", "12 square feet".  The unit
# must be separated by whitespace and its words be 2+ letters long, so that
# variables ("2x", "2 x y") are not mistaken for units.
_UNIT_WORD = r"[a-zA-Z]{2,}(?:\^\{?\d\}?)?"
_TRAILING_UNIT_RE = re.compile(rf"(?P<value>.*?)\s+(?P<unit>{_UNIT_WORD}(?:[\s\-]+{_UNIT_WORD})*)")
# "x = 5" -> "5" (a single variable name on the left of one equals sign).
_VARIABLE_ASSIGNMENT_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?=[^=]+$)")


def _unwrap_macro(s: str, macro: str) -> str:
    """Replace every ``macro{content}`` by `` content `` (balanced braces)."""
    out: list[str] = []
    i = 0
    while True:
        j = s.find(macro, i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j + len(macro)
        # Do not treat "\textbf" as "\text" + "bf".
        if k < len(s) and s[k].isalpha():
            out.append(s[i:k])
            i = k
            continue
        while k < len(s) and s[k] == " ":
            k += 1
        group = _read_braced(s, k) if k < len(s) and s[k] == "{" else None
        if group is None:
            out.append(s[i : j + len(macro)])
            i = j + len(macro)
            continue
        out.append(s[i:j])
        # Spaces keep "5\text{cm}" separable into value and unit.
        out.append(f" {group[0]} ")
        i = group[1]


def _read_latex_argument(s: str, i: int) -> tuple[str, int] | None:
    """Read one macro argument at ``i``: a braced group, a ``\\command`` or a single character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] == "{":
        return _read_braced(s, i)
    if s[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    return s[i], i + 1


def _is_atom(expr: str) -> bool:
    """Whether ``expr`` can be written next to ``/`` without parentheses."""
    return bool(re.fullmatch(r"[-+]?[\w.]+|\\[a-zA-Z]+(?:\{[^{}]*\})?|\([^()]*\)", expr))


def _fracs_to_slash(s: str) -> str:
    """Rewrite ``\\frac{a}{b}`` (and ``\\frac12``) as ``a/b``, parenthesising compound parts.

    ``a/b`` is chosen as the canonical spelling because models write both forms
    and the slash form is also what plain-text references (GSM8K) use.
    """
    out: list[str] = []
    i = 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        num = _read_latex_argument(s, j + len("\\frac"))
        den = _read_latex_argument(s, num[1]) if num else None
        if num is None or den is None:
            out.append(s[i:])
            return "".join(out)
        a, b = _fracs_to_slash(num[0]), _fracs_to_slash(den[0])
        a = a if _is_atom(a) else f"({a})"
        b = b if _is_atom(b) else f"({b})"
        out.append(s[i:j])
        out.append(f"{a}/{b}")
        i = den[1]


def _parse_number(s: str) -> Decimal | None:
    """Parse a plain decimal number (thousands separators allowed), else ``None``."""
    if not _NUMBER_RE.fullmatch(s):
        return None
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None


def _format_decimal(d: Decimal) -> str:
    """Canonical text of a number: ``3.0`` -> ``3``, ``007`` -> ``7``, ``-0`` -> ``0``."""
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _format_fraction(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of a canonical numeric answer (``7``, ``-3.5``, ``3/4``), else ``None``."""
    d = _parse_number(s)
    if d is not None:
        return Fraction(d)
    m = _SIMPLE_FRACTION_RE.fullmatch(s) or re.fullmatch(r"\((?P<num>[^()]+)\)/\((?P<den>[^()]+)\)", s)
    if m:
        num, den = _parse_number(m.group("num")), _parse_number(m.group("den"))
        if num is not None and den is not None and den != 0:
            return Fraction(num) / Fraction(den)
    # "-3/4" where the sign sits in front of a fraction.
    if s.startswith("-") and len(s) > 1 and not s[1:].startswith("-"):
        inner = _to_fraction(s[1:])
        return -inner if inner is not None else None
    return None


def _looks_numeric(s: str) -> bool:
    s = s.replace(" ", "")
    return _to_fraction(s) is not None or _to_fraction(_fracs_to_slash(s)) is not None


def _squeeze_space(m: re.Match[str]) -> str:
    macro = m.group(1) or ""
    return macro + " " if macro and m.group(2) else macro


def normalize_answer(s: str) -> str:
    """Canonical form of an answer string, so that formatting differences compare equal.

    Removes ``$``, whitespace, ``\\left``/``\\right``, ``\\text{...}``-style
    wrappers, a trailing period, ``%`` and degree signs; drops trailing unit words
    ("5 dollars", "90 degrees") only when what remains is a number (so "x+y"
    keeps its letters); maps ``\\dfrac``/``\\tfrac`` to ``\\frac`` and every
    fraction to ``a/b``; writes numbers canonically (``1,000`` -> ``1000``,
    ``3.0`` -> ``3``, ``007`` -> ``7``, ``-0`` -> ``0``, ``6/8`` -> ``3/4``).
    """
    s = s.strip().replace("\u2212", "-")  # unicode minus sign
    whole_boxed = _boxed_contents(s)
    if len(whole_boxed) == 1 and re.fullmatch(r"\$*\\(?:boxed|fbox)\s*\{.*\}\$*", s, re.DOTALL):
        s = whole_boxed[0]
    for macro in _TEXT_MACROS:
        s = _unwrap_macro(s, macro)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])", "", s)
    s = s.replace("{,}", ",")  # LaTeX thousands separator: 5{,}050 -> 5,050
    s = re.sub(r"\\[,;:! ]", " ", s)  # LaTeX spacing commands
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s).replace("\\circ", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.strip()
    while s.endswith("."):
        s = s[:-1].rstrip()
    s = _VARIABLE_ASSIGNMENT_RE.sub("", s)

    # Units are dropped only if what remains is a number: "5 dollars" -> "5",
    # but "2x y" or "\pi r" keep their letters.
    m = _TRAILING_UNIT_RE.fullmatch(s)
    if m and m.group("value") and _looks_numeric(m.group("value")):
        s = m.group("value")

    # Drop whitespace, except that "\pi r" must not become the different macro "\pir".
    s = re.sub(r"(\\[a-zA-Z]+)?\s+(?=([a-zA-Z])?)", _squeeze_space, s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)  # \sqrt2 -> \sqrt{2}
    s = _fracs_to_slash(s)

    d = _parse_number(s)
    if d is not None:
        return _format_decimal(d)
    if "/" in s:
        f = _to_fraction(s)
        if f is not None:
            return _format_fraction(f)
    return s


def _decimal_places(s: str) -> int | None:
    """Digits after the point of a canonical decimal answer (``0.333`` -> 3), else ``None``."""
    if "." not in s or _parse_number(s) is None:
        return None
    return len(s.split(".", 1)[1])


def _approximates(text: str, value: Fraction, exact: Fraction, rel_tol: float) -> bool:
    """Whether the decimal ``text`` (= ``value``) is a rounded or truncated writing of ``exact``.

    Only a value that has no exact writing with that many decimal places can be
    approximated: ``1000000.5`` is not "about" ``1000000``, it is another number.
    The approximation must also be within one unit of its last place and within
    ``rel_tol`` relatively, so ``0.33`` is too coarse an answer for ``1/3``.
    """
    places = _decimal_places(text)
    if places is None:
        return False
    unit = Fraction(1, 10**places)
    if (exact / unit).denominator == 1:
        return False
    error = abs(value - exact)
    return error < unit and error <= Fraction(repr(rel_tol)) * max(abs(value), abs(exact))


def answers_match(pred: str | None, reference: str, rel_tol: float = 1e-6) -> bool:
    """Whether a predicted answer equals the reference answer.

    True when the normalised strings are equal or when both are numbers (plain,
    decimal or fraction) of exactly the same value.  The one tolerance: a decimal
    may stand for a value it cannot write exactly (``0.333333`` for ``1/3``,
    ``3.14159`` for ``3.14159265``) when it is off by less than one unit of its last
    digit and by at most ``rel_tol`` relatively.  Integers and fractions compare
    exactly, so ``2001001`` never matches ``2001000``.  ``None`` (no answer
    extracted) never matches.
    """
    if pred is None:
        return False
    a, b = normalize_answer(pred), normalize_answer(reference)
    if a == b:
        return True
    fa, fb = _to_fraction(a), _to_fraction(b)
    if fa is None or fb is None:
        return False
    if fa == fb:
        return True
    return _approximates(a, fa, fb, rel_tol) or _approximates(b, fb, fa, rel_tol)
