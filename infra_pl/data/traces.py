"""The long chain-of-thought layout: a thought section, then a solution section.

Bespoke-Stratos-17k, OpenThoughts-114k and the embedded demo all write an assistant turn as
``<|begin_of_thought|> ... <|end_of_thought|> <|begin_of_solution|> ... <|end_of_solution|>``.
Several parts need the two halves apart: behaviour tagging looks only at the thought (the
solution is a clean write-up, not the reasoning process), the length-quantile difficulty
fallback measures the thought, and the answer of a math trace is read from the solution.
Keeping the parsing here means there is one definition of "the thought".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra_pl.data.sentences import MARKERS

BEGIN_THOUGHT, END_THOUGHT, BEGIN_SOLUTION, END_SOLUTION = MARKERS


@dataclass(frozen=True)
class TraceParts:
    """Character spans of the two sections in the original text (``None`` where absent).

    Spans exclude the markers themselves, so ``text[slice(*thought)]`` is the thought body.
    """

    thought: tuple[int, int] | None
    solution: tuple[int, int] | None

    @property
    def has_markers(self) -> bool:
        return self.thought is not None or self.solution is not None


def split_trace(text: str) -> TraceParts:
    """Locate the thought and solution sections; tolerant of a missing closing marker.

    Why tolerant: generations and truncated training traces often stop before
    ``<|end_of_thought|>``; the thought then runs to the solution marker or the end.
    """
    thought = solution = None
    start = text.find(BEGIN_THOUGHT)
    if start >= 0:
        body = start + len(BEGIN_THOUGHT)
        end = text.find(END_THOUGHT, body)
        if end < 0:
            end = text.find(BEGIN_SOLUTION, body)
        thought = (body, len(text) if end < 0 else end)
    start = text.find(BEGIN_SOLUTION)
    if start >= 0:
        body = start + len(BEGIN_SOLUTION)
        end = text.find(END_SOLUTION, body)
        solution = (body, len(text) if end < 0 else end)
    return TraceParts(thought, solution)


def thought_text(text: str) -> str:
    """The reasoning part of an assistant turn: the thought if marked, else the whole text."""
    parts = split_trace(text)
    if parts.thought is None:
        return text if parts.solution is None else text[: text.find(BEGIN_SOLUTION)]
    return text[slice(*parts.thought)]


def solution_text(text: str) -> str:
    """The solution section if marked, else the whole text (short-CoT answers are all solution)."""
    parts = split_trace(text)
    return text if parts.solution is None else text[slice(*parts.solution)]


def join_trace(thought: str, solution: str) -> str:
    """Build an assistant turn in the layout above (blank lines as in the public datasets)."""
    return (
        f"{BEGIN_THOUGHT}\n\n{thought.strip()}\n\n{END_THOUGHT}\n\n"
        f"{BEGIN_SOLUTION}\n\n{solution.strip()}\n\n{END_SOLUTION}"
    )


# Answer-format instructions that Bespoke-Stratos / OpenThoughts put in front of the problem.
# Stripping them gives the bare problem text, the key difficulty tables are indexed by.
_FORMAT_PREFIXES = (
    re.compile(r"^\s*Return your final response within \\boxed\{\}\.?\s*"),
    re.compile(
        r"^\s*Generate an executable Python function[^.]*\."
        r"(?:\s*(?:The function should|Simply call|Return the function body)[^.]*\.)*\s*"
    ),
)


def problem_from_prompt(prompt: str) -> str:
    """The problem statement of a user prompt, without a leading answer-format instruction."""
    for pattern in _FORMAT_PREFIXES:
        match = pattern.match(prompt)
        if match:
            return prompt[match.end() :]
    return prompt
