"""A difficulty level per example, from the best signal available, with its provenance.

Why provenance: the paper's difficulty findings (§4.2, Figures 3b and 5) compare levels, and a
level read from the MATH ``level`` column, one joined from a Numina-style table and one inferred
from the trace length are different measurements. Every level therefore carries a
``difficulty_source`` and :class:`DifficultySummary` reports (and warns about) mixtures.

Signals, in the order :func:`assign_difficulty` tries them by default:

* ``given``: a level the adapter already set from the row (MATH ``Level 3``, LiveCodeBench
  ``easy/medium/hard``, APPS ``introductory/interview/competition``).
* ``table``: a local JSONL/JSON/CSV/Parquet table keyed by problem text (:class:`DifficultyTable`).
* ``length``: reasoning-trace length quantiles per domain, ``k`` levels (:class:`LengthLevels`);
  a fallback, because a long trace is only a proxy for a hard problem.
"""

from __future__ import annotations

import bisect
import collections
import csv
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from infra_pl.data.schema import DataError
from infra_pl.data.traces import problem_from_prompt, thought_text

SIGNALS = ("given", "table", "length")

# Named levels found in public datasets. Edit here to teach the parser a new vocabulary.
LEVEL_NAMES: dict[str, int] = {
    # LiveCodeBench, Codeforces-style tags
    "easy": 1,
    "medium": 2,
    "hard": 3,
    # APPS
    "introductory": 1,
    "interview": 2,
    "competition": 3,
    # TACO (EASY, MEDIUM, MEDIUM_HARD, HARD, VERY_HARD; easy/medium/hard as above)
    "medium_hard": 3,
    "very_hard": 4,
}
_LEVEL_RE = re.compile(r"^(?:level\s*)?(\d+)$", re.IGNORECASE)
_UNKNOWN_LEVELS = {"", "?", "level ?", "unknown", "none", "null", "n/a", "unknown_difficulty"}
LENGTH_SOURCE = "length_quantile"
LENGTH_NOTE = "difficulty = length quintile"  # how figures and reports name the fallback


def parse_level(value: Any) -> int | None:
    """An integer level from ``3``, ``"3"``, ``"Level 3"``, ``"easy"``, ``"interview"``...

    Returns ``None`` for a missing or explicitly unknown level (MATH has a few ``"Level ?"``
    rows); raises ``ValueError`` for anything else, so a new vocabulary is noticed.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip().lower()
    if text in _UNKNOWN_LEVELS:
        return None
    if text in LEVEL_NAMES:
        return LEVEL_NAMES[text]
    match = _LEVEL_RE.match(text)
    if match:
        return int(match.group(1))
    raise ValueError(f"unrecognised difficulty {value!r} (known names: {sorted(LEVEL_NAMES)}, or 'Level N' / N)")


def normalise_key(text: str) -> str:
    """Join key for problem text: whitespace-collapsed and stripped (case is kept: LaTeX cares)."""
    return " ".join(str(text).split())


def _read_table_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}, row {number}: malformed JSON ({err.msg})") from None
        return rows
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return data
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unsupported difficulty table type '{suffix}' (use .jsonl, .json, .csv or .parquet)")


@dataclass
class DifficultyTable:
    """Levels keyed by problem text, e.g. the MATH train table or a Numina-style difficulty table.

    Args:
        levels: normalised problem text -> level.
        name: shown in ``difficulty_source`` as ``table:<name>``.
    """

    levels: dict[str, int]
    name: str
    hits: int = 0
    misses: int = 0

    @classmethod
    def load(cls, path: str | Path, key: str = "problem", level: str = "level") -> "DifficultyTable":
        """Read a table; rows without a usable level are ignored, conflicting duplicates are errors."""
        path = Path(path).expanduser()
        if not path.exists():
            raise DataError(f"{path}: difficulty table not found")
        levels: dict[str, int] = {}
        for number, row in enumerate(_read_table_rows(path), start=1):
            if key not in row or level not in row:
                raise DataError(f"{path}, row {number}: difficulty table needs fields '{key}' and '{level}', has {sorted(row)}")
            try:
                value = parse_level(row[level])
            except ValueError as err:
                raise DataError(f"{path}, row {number}: field '{level}': {err}") from None
            if value is None:
                continue
            text = normalise_key(row[key])
            if levels.setdefault(text, value) != value:
                raise DataError(
                    f"{path}, row {number}: problem listed twice with different levels ({levels[text]} and {value})"
                )
        if not levels:
            raise DataError(f"{path}: difficulty table has no rows with a level in field '{level}'")
        return cls(levels, path.name)

    @classmethod
    def from_option(cls, option: Any) -> "DifficultyTable":
        """Build from a Source option: a path, or ``{path, key, level}``."""
        if isinstance(option, (str, Path)):
            return cls.load(option)
        if isinstance(option, Mapping) and "path" in option:
            unknown = set(option) - {"path", "key", "level"}
            if unknown:
                raise DataError(f"difficulty_table: unknown keys {sorted(unknown)}; use path, key, level")
            return cls.load(option["path"], option.get("key", "problem"), option.get("level", "level"))
        raise DataError(f"difficulty_table must be a path or {{path, key, level}}, got {option!r}")

    def lookup(self, text: str | None) -> int | None:
        if text is None:
            return None
        level = self.levels.get(normalise_key(text))
        if level is None:
            self.misses += 1
        else:
            self.hits += 1
        return level

    @property
    def source(self) -> str:
        return f"table:{self.name}"


def reasoning_length(example: Mapping[str, Any]) -> int:
    """Words in the reasoning of the last assistant turn (the thought if marked).

    Words, not tokens: difficulty must not depend on which tokenizer a run uses.
    """
    assistant = [m["content"] for m in example["messages"] if m["role"] == "assistant"]
    return len(thought_text(assistant[-1]).split()) if assistant else 0


@dataclass
class LengthLevels:
    """Quantile thresholds of reasoning length per domain, mapping a length to ``1..k``.

    Fit once on everything that will be compared (train and pool together for the difficulty
    flip), so a level means the same length band on both sides.
    """

    k: int
    thresholds: dict[str, list[int]]

    @classmethod
    def fit(cls, examples: Iterable[Mapping[str, Any]], k: int = 5) -> "LengthLevels":
        if k < 2:
            raise ValueError(f"length levels need k >= 2, got {k}")
        by_domain: dict[str, list[int]] = collections.defaultdict(list)
        for example in examples:
            by_domain[example["domain"]].append(reasoning_length(example))
        thresholds = {}
        for domain, lengths in by_domain.items():
            lengths.sort()
            n = len(lengths)
            # Cut q is the largest length of the lowest q/k share, so level bands are equal-sized.
            thresholds[domain] = [lengths[max(0, -(-n * q // k) - 1)] for q in range(1, k)]
        return cls(k, thresholds)

    def level(self, example: Mapping[str, Any]) -> int | None:
        cuts = self.thresholds.get(example["domain"])
        if cuts is None:
            return None
        return 1 + bisect.bisect_left(cuts, reasoning_length(example))


@dataclass
class DifficultySummary:
    """How many examples got a level from which signal, per domain."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # domain -> source -> n
    k_is_five: bool = True  # length levels are quintiles (the default k) rather than other quantiles

    def add(self, domain: str, source: str | None) -> None:
        per_domain = self.counts.setdefault(domain, {})
        key = source or "none"
        per_domain[key] = per_domain.get(key, 0) + 1

    def mixed_domains(self) -> list[str]:
        """Domains whose levels come from more than one signal (levels may not be comparable)."""
        return sorted(d for d, sources in self.counts.items() if len([s for s in sources if s != "none"]) > 1)

    def describe(self) -> str:
        parts = []
        for domain in sorted(self.counts):
            detail = ", ".join(f"{source}: {n}" for source, n in sorted(self.counts[domain].items()))
            parts.append(f"{domain} ({detail})")
        return "difficulty sources: " + "; ".join(parts)

    def length_domains(self) -> dict[str, int]:
        """Domains with levels from the length fallback, and how many examples got one that way."""
        return {d: n for d, sources in sorted(self.counts.items()) if (n := sources.get(LENGTH_SOURCE, 0))}

    def note(self) -> str | None:
        """``"difficulty = length quintile"`` (with its domains) when any level is the length fallback."""
        length = self.length_domains()
        if not length:
            return None
        return f"{LENGTH_NOTE if self.k_is_five else 'difficulty = length quantile'} ({', '.join(f'{d}: {n}' for d, n in length.items())})"

    def warn(self) -> None:
        length = self.length_domains()
        if length:
            warnings.warn(
                f"{self.describe()}. Levels of {sorted(length)} fall back to reasoning-LENGTH quantiles for "
                f"{sum(length.values())} example(s): a long trace is a proxy for a hard problem, not a measure of it. "
                "Figures and reports label them 'difficulty = length quintile'; give a difficulty table "
                "(data.difficulty.table) or levels in the data for a real signal.",
                stacklevel=3,
            )
        mixed = self.mixed_domains()
        if mixed:
            warnings.warn(
                f"{self.describe()}. Levels of {mixed} come from different signals and may not be comparable; "
                "restrict `signals` to one if the difficulty analysis or flip should use a single scale.",
                stacklevel=3,
            )

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {d: dict(sorted(s.items())) for d, s in sorted(self.counts.items())}


@dataclass
class DifficultyOptions:
    """How to fill the difficulty column (``data.difficulty`` in YAML).

    Args:
        signals: tried in order per example: ``given`` (the adapter's level), ``table`` (needs
            ``table``), ``length``.
        table: path of a JSONL/JSON/CSV/Parquet table of levels keyed by problem text.
        table_key: the table's problem-text column.
        table_level: the table's level column (numbers, "Level N", easy/medium/hard, APPS names).
        k: number of length-quantile levels.
    """

    signals: list[str] = field(default_factory=lambda: ["given", "length"])
    table: str | None = None
    table_key: str = "problem"
    table_level: str = "level"
    k: int = 5


def apply_difficulty(
    examples: Sequence[Mapping[str, Any]], options: DifficultyOptions
) -> tuple[list[dict[str, Any]], DifficultySummary]:
    """:func:`assign_difficulty` configured by ``options`` (a missing table is an error, not a skip).

    Pass everything whose levels will be compared in one call (training set and flip pool), so
    length-quantile thresholds are shared.
    """
    if ("table" in options.signals) != bool(options.table):
        raise DataError(
            "data.difficulty: the 'table' signal and a table path go together "
            f"(signals={list(options.signals)}, table={options.table!r})"
        )
    table = DifficultyTable.load(options.table, options.table_key, options.table_level) if options.table else None
    out, summary = assign_difficulty(examples, options.signals, table=table, k=options.k)
    summary.k_is_five = options.k == 5
    if table is not None and table.hits == 0 and table.misses:
        raise DataError(
            f"data.difficulty: the table {options.table} matched none of the {table.misses} problems looked up "
            f"(key column '{options.table_key}'; problem text is compared whitespace-normalised, without the prompt's "
            "answer-format instruction). Check that the table is keyed by the same problem text as the data."
        )
    return out, summary


def assign_difficulty(
    examples: Sequence[Mapping[str, Any]],
    signals: Sequence[str] = SIGNALS,
    table: DifficultyTable | None = None,
    k: int = 5,
    lengths: LengthLevels | None = None,
) -> tuple[list[dict[str, Any]], DifficultySummary]:
    """Copies of ``examples`` with ``difficulty`` and ``difficulty_source`` filled from ``signals``.

    The first signal that yields a level wins. ``length`` levels are fit on ``examples`` unless
    ``lengths`` is given (fit on a larger set to share thresholds). Examples no signal covers keep
    ``difficulty=None`` with ``difficulty_source=None``; the summary counts them as ``none``.
    """
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown difficulty signal(s) {unknown}; choose from {SIGNALS}")
    if "table" in signals and table is None:
        raise ValueError("difficulty signal 'table' needs a DifficultyTable (option difficulty_table)")
    if "length" in signals and lengths is None:
        lengths = LengthLevels.fit(examples, k)
    summary = DifficultySummary()
    out: list[dict[str, Any]] = []
    for example in examples:
        new = dict(example)
        level, source = None, None
        for signal in signals:
            if signal == "given" and example.get("difficulty") is not None:
                level, source = int(example["difficulty"]), example.get("difficulty_source") or "given"
            elif signal == "table":
                assert table is not None
                level, source = table.lookup(_problem_text(example)), table.source
            elif signal == "length":
                assert lengths is not None
                level, source = lengths.level(example), LENGTH_SOURCE
            if level is not None:
                break
        new["difficulty"] = level
        new["difficulty_source"] = source if level is not None else None
        summary.add(example["domain"], new["difficulty_source"])
        out.append(new)
    return out, summary


def _problem_text(example: Mapping[str, Any]) -> str | None:
    """The join key of an example: the last user turn without a known answer-format instruction."""
    users = [m["content"] for m in example["messages"] if m["role"] == "user"]
    return problem_from_prompt(users[-1]) if users else None
