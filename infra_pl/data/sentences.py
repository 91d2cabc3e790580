"""Split a reasoning trace into sentences with character offsets.

Why offsets: sentence-level influence (paper Eq. 7) scores a training example with and without
one sentence, so a caller must be able to cut exactly that sentence out of the original text and
nothing else. Why these rules: traces mix prose, inline math, fenced code and the Bespoke-Stratos
thought/solution markers; a code block or a marker is one unit of meaning, while prose splits at
sentence punctuation, except where the punctuation belongs to a number, a formula or an
abbreviation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKERS = (
    "<|begin_of_thought|>",
    "<|end_of_thought|>",
    "<|begin_of_solution|>",
    "<|end_of_solution|>",
)
KINDS = ("text", "code", "marker")
FENCE = "```"

# Lower-cased words that end with a period but do not end a sentence.
ABBREVIATIONS = frozenset(
    {"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp.", "fig.", "eq.", "mr.", "mrs.", "dr."}
)
_CLOSERS = "\"')]"  # may follow the end punctuation and still belong to the sentence
_ENUMERATOR = re.compile(r"\d{1,2}\.")  # "1." opening a numbered list item


@dataclass(frozen=True)
class Sentence:
    """One sentence: ``text == source[start:end]`` and ``kind`` in :data:`KINDS`."""

    start: int
    end: int
    text: str
    kind: str


def split_sentences(text: str) -> list[Sentence]:
    """Sentences of ``text`` in order; whitespace between sentences belongs to none of them."""
    sentences: list[Sentence] = []
    prose_start = 0
    pos = 0
    while pos < len(text):
        block = _block_at(text, pos)
        if block is None:
            pos += 1
            continue
        end, kind = block
        sentences.extend(_split_prose(text, prose_start, pos))
        sentences.append(Sentence(pos, end, text[pos:end], kind))
        prose_start = pos = end
    sentences.extend(_split_prose(text, prose_start, len(text)))
    return sentences


def remove_span(text: str, sentence: Sentence) -> str:
    """``text`` without ``sentence``, joining its neighbours with one separator.

    Why the stronger separator wins: removing the last sentence of a paragraph must keep the
    paragraph break, and removing a sentence from a line must not glue two lines together.
    """
    if text[sentence.start : sentence.end] != sentence.text:
        raise ValueError(f"sentence at {sentence.start}:{sentence.end} does not match the text")
    left = sentence.start
    while left > 0 and text[left - 1].isspace():
        left -= 1
    right = sentence.end
    while right < len(text) and text[right].isspace():
        right += 1
    if left == 0:
        return text[right:]
    if right == len(text):
        return text[:left]
    before, after = text[left : sentence.start], text[sentence.end : right]
    joint = after if after.count("\n") > before.count("\n") else before
    return text[:left] + joint + text[right:]


def remove_spans(text: str, sentences: list[Sentence]) -> str:
    """``text`` without every sentence in ``sentences`` (one counterfactual for a whole behaviour).

    Cut from the last to the first, so the offsets of the ones still to cut stay valid; each cut
    keeps the stronger separator between its neighbours, as :func:`remove_span` does.
    """
    for sentence in sorted(sentences, key=lambda s: s.start, reverse=True):
        text = remove_span(text, sentence)
    return text


def _block_at(text: str, pos: int) -> tuple[int, str] | None:
    """End and kind of a marker or fenced code block starting at ``pos``, else ``None``."""
    for marker in MARKERS:
        if text.startswith(marker, pos):
            return pos + len(marker), "marker"
    if text.startswith(FENCE, pos):
        close = text.find(FENCE, pos + len(FENCE))
        return (len(text) if close < 0 else close + len(FENCE)), "code"
    return None


def _split_prose(text: str, start: int, stop: int) -> list[Sentence]:
    """Sentences of the prose in ``text[start:stop]`` (no markers or code inside)."""
    out: list[Sentence] = []
    sentence_start = start
    brace_depth = 0
    in_math = False
    i = start
    while i < stop:
        ch = text[i]
        if ch == "\\" and i + 1 < stop:
            i += 2  # an escaped character (\$, \{) never opens or closes anything
            continue
        if ch == "$":
            if in_math:
                in_math = False
            elif _closes_later(text, i, stop):
                in_math = True
            i += 2 if text.startswith("$$", i) else 1
            continue
        if ch == "{":
            brace_depth += 1
        elif ch == "}":
            brace_depth = max(0, brace_depth - 1)
        elif ch == "\n" and _blank_line_follows(text, i, stop):
            out.extend(_make(text, sentence_start, i))
            sentence_start = i
            brace_depth, in_math = 0, False  # a paragraph break ends any unbalanced construct
        elif ch in ".?!" and not in_math and brace_depth == 0:
            end = i + 1
            while end < stop and text[end] in _CLOSERS:
                end += 1
            if (end == stop or text[end].isspace()) and not _is_abbreviation(text, sentence_start, i, ch):
                out.extend(_make(text, sentence_start, end))
                sentence_start = end
                i = end
                continue
        i += 1
    out.extend(_make(text, sentence_start, stop))
    return out


def _closes_later(text: str, pos: int, stop: int) -> bool:
    """Whether the ``$`` at ``pos`` has a partner before the paragraph ends (else it is a price)."""
    width = 2 if text.startswith("$$", pos) else 1
    paragraph_end = text.find("\n\n", pos, stop)
    limit = stop if paragraph_end < 0 else paragraph_end
    return text.find("$" * width, pos + width, limit) >= 0


def _blank_line_follows(text: str, pos: int, stop: int) -> bool:
    j = pos + 1
    while j < stop and text[j] in " \t\r":
        j += 1
    return j < stop and text[j] == "\n"


def _is_abbreviation(text: str, sentence_start: int, dot: int, ch: str) -> bool:
    """Whether the period at ``dot`` ends an abbreviation or a list enumerator, not a sentence."""
    if ch != ".":
        return False
    word_start = dot
    while word_start > sentence_start and not text[word_start - 1].isspace() and text[word_start - 1] not in "([":
        word_start -= 1
    word = text[word_start : dot + 1]
    if word.lower() in ABBREVIATIONS:
        return True
    # "1." alone at the start of a sentence numbers a list item rather than ending a sentence.
    return word_start == _first_non_space(text, sentence_start, dot) and bool(_ENUMERATOR.fullmatch(word))


def _first_non_space(text: str, start: int, stop: int) -> int:
    while start < stop and text[start].isspace():
        start += 1
    return start


def _make(text: str, start: int, end: int) -> list[Sentence]:
    """The stripped span ``[start, end)`` as a text sentence, or nothing if it is blank."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [Sentence(start, end, text[start:end], "text")] if start < end else []
