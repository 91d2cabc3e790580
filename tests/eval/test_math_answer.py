import pytest

from infra_pl.eval.math_answer import answers_match, extract_answer, normalize_answer

# --------------------------------------------------------------------------- extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\sqrt{\frac{a}{b}} + {c}}", r"\sqrt{\frac{a}{b}} + {c}"),
        (r"First \boxed{3}, wait, actually \boxed{4}.", "4"),
        (r"The result is \boxed 5 apples", "5"),
        (r"\boxed{-12}", "-12"),
        ("The answer is \\boxed{7}.", "7"),  # the demo data's solution format
        ("Step 1 ...\nThe answer is: 1,234.", "1,234"),
        ("The answer is 3.5.", "3.5"),
        ("The answer is: 2\nblah\nThe answer is: 9", "9"),
        ("The final answer is $\\frac{5}{2}$.", r"\frac{5}{2}"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### -3", "-3"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_boxed_has_priority_over_other_formats():
    text = "#### 1\nThe answer is: 2\n\\boxed{3}"
    assert extract_answer(text) == "3"
    assert extract_answer("#### 1\nThe answer is: 2") == "2"


def test_truncated_boxed_falls_back_to_last_complete_one():
    assert extract_answer(r"\boxed{1} and then \boxed{\frac{2}{") == "1"


def test_no_answer_is_none():
    assert extract_answer("I think it is probably 42 or so") is None
    assert extract_answer("") is None
    assert extract_answer("The answer is:   \n") is None


def test_fallback_last_number():
    text = "First 3 apples, then 1,250.5 more"
    assert extract_answer(text) is None
    assert extract_answer(text, fallback_last_number=True) == "1,250.5"
    assert extract_answer("no digits", fallback_last_number=True) is None


# --------------------------------------------------------------------------- normalize_answer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$1,000$", "1000"),
        ("1,234,567", "1234567"),
        ("3.0", "3"),
        ("3.50", "3.5"),
        ("007", "7"),
        ("-0", "0"),
        ("+5", "5"),
        (".5", "0.5"),
        ("10.", "10"),
        (r"\dfrac{3}{4}", "3/4"),
        (r"\tfrac34", "3/4"),
        ("6/8", "3/4"),
        ("4/2", "2"),
        (r"-\frac{1}{2}", "-1/2"),
        (r"\frac{-1}{2}", "-1/2"),
        (r"\frac{x+1}{2}", "(x+1)/2"),
        (r"\frac{\sqrt{3}}{2}", r"\sqrt{3}/2"),
        ("5 dollars", "5"),
        (r"\$5.00", "5"),
        ("90 degrees", "90"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"50\%", "50"),
        (r"5\text{ cm}", "5"),
        (r"5\text{cm}", "5"),
        (r"\text{(B)}", "(B)"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        ("x = 5", "5"),
        ("x + y", "x+y"),
        (r"2\pi r", r"2\pi r"),  # must not merge into the macro "\pir"
        (r"\boxed{42}", "42"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_units_kept_when_rest_is_not_numeric():
    assert normalize_answer("2 x y") == "2xy"
    assert normalize_answer(r"\pi r") == r"\pi r"


# --------------------------------------------------------------------------- answers_match


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        (r"\dfrac{3}{4}", "0.75"),
        (r"\frac{1}{2}", "1/2"),
        ("1,234", "1234"),
        ("0.333333", "1/3"),
        ("-0.5", r"-\frac{1}{2}"),
        ("72.0", "72"),
        ("$18", "18 dollars"),
        ("x + 1", "x+1"),
        ("-0", "0"),
    ],
)
def test_answers_match(pred, ref):
    assert answers_match(pred, ref)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("2", "3"),
        ("-5", "5"),
        ("0.33", "1/3"),
        ("x+1", "x-1"),
        ("1,2", "12"),
        (None, "1"),
    ],
)
def test_answers_do_not_match(pred, ref):
    assert not answers_match(pred, ref)


def test_end_to_end_with_extraction():
    generated = "Half of 3/2 is 3/4, i.e. 0.75.\nThe answer is \\boxed{\\dfrac{3}{4}}."
    assert answers_match(extract_answer(generated), "0.75")
    assert not answers_match(extract_answer("no idea"), "0.75")


# --------------------------------------------------------------------------- exactness (issue 16)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("2001001", "2001000"),  # integers compare exactly, however large
        ("1000001", "1,000,000"),
        ("123456789012", "123456789013"),
        ("1000000.5", "1000000"),  # a decimal that writes another number exactly is not an approximation
        ("2001000.0001", "2001000"),
        ("3.1416", "3.1415"),
        ("1000001/3", "1000000/3"),  # fractions compare exactly
        ("333333.9", "1000000/3"),  # off by more than one unit of the last place
        ("0.666", "2/3"),  # too coarse relatively
    ],
)
def test_numbers_compare_exactly(pred, ref):
    assert not answers_match(pred, ref)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("0.666667", "2/3"),  # rounded
        ("0.666666", "2/3"),  # truncated
        ("333333.33", "1000000/3"),
        ("3.14159", "3.14159265"),  # the less precise decimal approximates the more precise one
        ("2001000", "2,001,000"),
        ("4002/2", "2001"),
    ],
)
def test_decimal_approximations_still_match(pred, ref):
    assert answers_match(pred, ref)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("5{,}050", "5050"),
        ("$5{,}050{,}000$", "5050000"),
        ("5,050", "5050"),
        (r"5\,050", "5050"),
        ("\u22129", "-9"),  # unicode minus sign
        ("\u2212\\frac{1}{2}", "-0.5"),
        (r"\boxed{\u22121{,}000}".replace(r"\u2212", "\u2212"), "-1000"),
    ],
)
def test_separators_and_unicode_minus(pred, ref):
    assert answers_match(pred, ref)


def test_normalize_separators_and_unicode_minus():
    assert normalize_answer("5{,}050") == "5050"
    assert normalize_answer("\u22129") == "-9"
