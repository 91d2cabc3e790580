"""Sentence splitting must be exact: sentence-level influence removes one sentence by its offsets."""

from __future__ import annotations

import pytest

from infra_pl.data.sentences import Sentence, remove_span, split_sentences


def texts(text: str) -> list[str]:
    return [s.text for s in split_sentences(text)]


def assert_offsets(text: str) -> list[Sentence]:
    sentences = split_sentences(text)
    previous_end = 0
    for s in sentences:
        assert text[s.start : s.end] == s.text
        assert s.text == s.text.strip() and s.text
        assert s.start >= previous_end  # ordered, non-overlapping
        assert text[previous_end : s.start].strip() == ""  # only whitespace is left out
        previous_end = s.end
    assert text[previous_end:].strip() == ""
    return sentences


def test_prose_splits_after_end_punctuation_and_blank_lines() -> None:
    text = "First step. Is it right? Yes!\nNext line.\n\nA heading without a period\n\nLast one"
    assert texts(text) == [
        "First step.",
        "Is it right?",
        "Yes!",
        "Next line.",
        "A heading without a period",
        "Last one",
    ]
    assert {s.kind for s in split_sentences(text)} == {"text"}


def test_single_newline_without_punctuation_does_not_split() -> None:
    assert texts("so the sum\nis seven. Done.") == ["so the sum\nis seven.", "Done."]


def test_code_block_is_one_sentence() -> None:
    code = "```python\ndef f(x):\n    y = x. real\n\n    return y  # done. really!\n```"
    text = f"Here is the code. {code}\nIt works."
    sentences = assert_offsets(text)
    assert [(s.kind, s.text) for s in sentences] == [
        ("text", "Here is the code."),
        ("code", code),
        ("text", "It works."),
    ]


def test_unclosed_code_block_runs_to_the_end() -> None:
    text = "Code follows. ```python\nx = 1. y = 2"
    assert [s.kind for s in split_sentences(text)] == ["text", "code"]
    assert split_sentences(text)[-1].end == len(text)


def test_markers_are_their_own_sentences() -> None:
    text = (
        "<|begin_of_thought|>\nThink. Then act.\n<|end_of_thought|>\n"
        "<|begin_of_solution|>The answer is 4.<|end_of_solution|>"
    )
    sentences = assert_offsets(text)
    assert [(s.kind, s.text) for s in sentences] == [
        ("marker", "<|begin_of_thought|>"),
        ("text", "Think."),
        ("text", "Then act."),
        ("marker", "<|end_of_thought|>"),
        ("marker", "<|begin_of_solution|>"),
        ("text", "The answer is 4."),
        ("marker", "<|end_of_solution|>"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The value is 3.5 here. Next.", ["The value is 3.5 here.", "Next."]),
        ("So x = \\boxed{3. 5} then. Next.", ["So x = \\boxed{3. 5} then.", "Next."]),
        ("The answer is \\boxed{3.5}. Next.", ["The answer is \\boxed{3.5}.", "Next."]),
        ("We get $x = 2. y = 3$ here. Next.", ["We get $x = 2. y = 3$ here.", "Next."]),
        ("It costs $5. Then more.", ["It costs $5.", "Then more."]),  # a lone $ is a price, not math
        ("Use tools, e.g. a pen. Next.", ["Use tools, e.g. a pen.", "Next."]),
        ("That is, i.e. seven. Next.", ["That is, i.e. seven.", "Next."]),
        ("Apples, pears etc. are fruit. Next.", ["Apples, pears etc. are fruit.", "Next."]),
        ("He said \"stop.\" Then left.", ["He said \"stop.\"", "Then left."]),
        ("1. Add the ones. 2. Add the tens.", ["1. Add the ones.", "2. Add the tens."]),
    ],
)
def test_no_split_inside_numbers_math_or_abbreviations(text: str, expected: list[str]) -> None:
    assert texts(text) == expected
    assert_offsets(text)


def test_offsets_round_trip_on_a_mixed_trace() -> None:
    text = (
        "<|begin_of_thought|>\nLet me break this into steps.  7 + 5 = 12.\n\nWait, that is wrong, e.g. 3.5?"
        "\n<|end_of_thought|>\n<|begin_of_solution|>\n```python\ndef f(x):\n    return x\n```\n"
        "The answer is \\boxed{12}.\n<|end_of_solution|>"
    )
    sentences = assert_offsets(text)
    assert [s.kind for s in sentences].count("code") == 1
    assert [s.kind for s in sentences].count("marker") == 4


def test_empty_and_blank_text() -> None:
    assert split_sentences("") == []
    assert split_sentences("  \n\n  ") == []


def test_remove_span_middle_first_last() -> None:
    text = "One. Two. Three."
    one, two, three = split_sentences(text)
    assert remove_span(text, two) == "One. Three."
    assert remove_span(text, one) == "Two. Three."
    assert remove_span(text, three) == "One. Two."


def test_remove_span_keeps_the_stronger_separator() -> None:
    text = "<|begin_of_thought|>\nA. B.\n<|end_of_thought|>"
    sentences = split_sentences(text)
    a, b = sentences[1], sentences[2]
    assert remove_span(text, a) == "<|begin_of_thought|>\nB.\n<|end_of_thought|>"
    assert remove_span(text, b) == "<|begin_of_thought|>\nA.\n<|end_of_thought|>"
    paragraphs = "A. B.\n\nC."
    assert remove_span(paragraphs, split_sentences(paragraphs)[1]) == "A.\n\nC."


def test_remove_span_of_a_code_block_and_stale_sentence() -> None:
    text = "Code:\n```python\nx = 1\n```\nDone."
    code = split_sentences(text)[1]
    assert remove_span(text, code) == "Code:\nDone."
    with pytest.raises(ValueError):
        remove_span("Other text entirely.", code)


def test_sentence_is_frozen() -> None:
    sentence = split_sentences("Hi.")[0]
    with pytest.raises(AttributeError):
        sentence.start = 3  # type: ignore[misc]
