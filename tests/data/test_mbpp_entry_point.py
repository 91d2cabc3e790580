"""Entry point of code problems whose tests call ``candidate(...)`` (HumanEval style, issue 16)."""

import json

from infra_pl.data.eval_adapters import mbpp_entry_point
from infra_pl.data.sources import Source, load_source

# Hand-written HumanEval-like problems: a helper is defined before the entry point and the
# tests only ever call ``candidate``.
COUNT_PRIMES = '''\
def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n ** 0.5) + 1))


def count_primes(limit):
    """How many primes are below ``limit``."""
    return sum(1 for k in range(limit) if is_prime(k))
'''
CHECK_COUNT_PRIMES = '''\
def check(candidate):
    assert candidate(10) == 4
    assert candidate(2) == 0
    assert is_prime(7)
'''

VOWELS = '''\
VOWELS = set("aeiou")

def _lower(s):
    return s.lower()

def _is_vowel(c):
    return c in VOWELS

def count_vowels(s):
    return sum(_is_vowel(c) for c in _lower(s))
'''
CHECK_VOWELS = "def check(candidate):\n    assert candidate('Banana') == 3\n    assert candidate('') == 0\n"


def test_check_call_names_the_entry_point():
    # The MBPP-schema conversion's test list ends with "check(<name>)".
    assert mbpp_entry_point(COUNT_PRIMES, [CHECK_COUNT_PRIMES, "check(count_primes)"]) == "count_primes"
    assert mbpp_entry_point(VOWELS, [CHECK_VOWELS + "\ncheck(candidate=count_vowels)"]) == "count_vowels"


def test_last_top_level_def_without_check_call():
    # Helpers come first (one is even called by the tests); the last top-level def is the entry point.
    assert mbpp_entry_point(COUNT_PRIMES, [CHECK_COUNT_PRIMES]) == "count_primes"
    assert mbpp_entry_point(VOWELS, ["assert candidate('Banana') == 3", "assert candidate('xyz') == 0"]) == "count_vowels"
    nested = "def outer(xs):\n    def key(x):\n        return -x\n    return sorted(xs, key=key)\n"
    assert mbpp_entry_point("def _unused():\n    pass\n\n" + nested, ["assert candidate([1, 2]) == [2, 1]"]) == "outer"


def test_a_named_entry_point_wins():
    assert mbpp_entry_point(COUNT_PRIMES, [CHECK_COUNT_PRIMES], named="count_primes") == "count_primes"
    assert mbpp_entry_point(VOWELS, ["assert _lower('A') == 'a'"], named=" count_vowels ") == "count_vowels"


def test_mbpp_style_tests_unchanged():
    code = "def helper(x):\n    pass\ndef main_fn(y):\n    pass"
    assert mbpp_entry_point(code, ["assert set(main_fn(1)) == {1}"]) == "main_fn"
    # MBPP has functions named "check": called with values, not a HumanEval check(candidate).
    assert mbpp_entry_point("def check(s):\n    return s == s[::-1]", ["assert check('aba')"]) == "check"
    assert mbpp_entry_point("def f(x):\n    return x", ["assert True"]) == "f"
    assert mbpp_entry_point("", ["assert True"]) is None


def test_mbpp_adapter_on_humaneval_like_rows(tmp_path):
    rows = [
        {"text": "Count the primes below n.", "code": COUNT_PRIMES, "test_list": [CHECK_COUNT_PRIMES, "check(count_primes)"]},
        {"prompt": "Count the vowels.", "code": VOWELS, "test_list": [CHECK_VOWELS]},
        {"prompt": "Count the vowels.", "code": VOWELS, "test_list": ["assert _lower('A') == 'a'"], "entry_point": "count_vowels"},
    ]
    path = tmp_path / "humaneval_like.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples = load_source(Source(str(path), adapter="mbpp"))
    assert [e["entry_point"] for e in examples] == ["count_primes", "count_vowels", "count_vowels"]
