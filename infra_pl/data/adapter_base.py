"""The adapter registry and the machinery shared by the public-dataset adapters: options, the bad-row
policy, the summary.

``ADAPTERS`` maps each ``adapter:`` name of a YAML source to its adapter. Plain functions
``fn(row, where)`` register with :func:`register_adapter` (the identity adapter ``"infra"``, here);
adapters with options register with :func:`register` (:mod:`infra_pl.data.adapters` and
:mod:`infra_pl.data.eval_adapters`, which :mod:`infra_pl.data.sources` imports, so the registry is
complete wherever ``sources`` is importable). This module imports no adapter and not ``sources``.

Why a class around each adapter function: hub datasets have rows that cannot be mapped (an
unknown MetaMathQA ``type``, a conversation without an assistant turn, an empty answer). A user
must choose between stopping at the first one (``bad_rows: error``, the default, with a message
naming file, row, field and reason) and skipping them (``bad_rows: skip``), and must be told how
many were skipped and why. That needs per-source state (options, counters), which a plain
``fn(row, where)`` cannot hold. :class:`OptionAdapter` is still registered in ``ADAPTERS`` and
callable as ``fn(row, where)`` (default options); ``bind(options, source_name)`` gives a fresh
:class:`BoundAdapter` per source, and ``finish(file)`` emits one summary warning.

Options every adapter accepts:

* ``bad_rows``: ``error`` | ``skip``.
* ``system``: system prompt; ``null`` keeps the adapter's default, ``""`` sends none, and a
  name from :data:`SYSTEM_PRESETS` (``"@short_math"``, ``"@short_code"``, ``"@long_cot"``) picks a
  shared prompt, so training and evaluation sources can use the same text without repeating it.
* ``source``: the ``source`` field of the examples (part of the content id), default the adapter name.
* ``difficulty_table``: a path or ``{path, key, level}``: levels joined by problem text
  (:class:`~infra_pl.data.difficulty.DifficultyTable`) for rows without their own level.
* ``category``: overrides the category of every example.
"""

from __future__ import annotations

import collections
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from infra_pl.data.difficulty import DifficultyTable
from infra_pl.data.schema import DataError, RowLocation, validate_example

Adapter = Callable[[Mapping[str, Any], RowLocation], "dict[str, Any] | None"]
ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str) -> Callable[[Adapter], Adapter]:
    """Decorator: make an adapter selectable by name in YAML (``adapter: metamathqa``)."""

    def wrap(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        return fn

    return wrap


@register_adapter("infra")
def _identity(row: Mapping[str, Any], where: RowLocation) -> dict[str, Any]:
    return dict(row)

BAD_ROWS = ("error", "skip")
COMMON_OPTIONS: dict[str, Any] = {
    "bad_rows": "error",
    "system": None,
    "source": None,
    "difficulty_table": None,
    "category": None,
}
# System prompts shared between training and evaluation sources of one recipe (our wording).
SYSTEM_PRESETS: dict[str, str] = {
    "@short_math": (
        "You are a careful math solver. Reason step by step, then finish with the line "
        "'The answer is: <answer>'."
    ),
    "@short_code": (
        "You are a careful programmer. Explain your approach briefly, then give the complete solution "
        "in one fenced code block."
    ),
    "@long_cot": (
        "Think about the question in depth before answering: explore, check and refine your reasoning "
        "inside <|begin_of_thought|> ... <|end_of_thought|>, then give a clean, self-contained final "
        "solution inside <|begin_of_solution|> ... <|end_of_solution|>. Put a final math answer in "
        "\\boxed{} and a final program in one ```python code block."
    ),
}

# Keys an adapter body may put in its output for the machinery; removed before validation.
JOIN_KEY = "_join_key"  # problem text to look up in ``difficulty_table``


class RowProblem(Exception):
    """A row that cannot be mapped. ``reason`` is the short, counted key; ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RowFiltered(Exception):
    """A row deliberately left out by an option (e.g. a language filter): skipped and counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class AdapterContext:
    """What an adapter body sees besides the row: the merged options and per-source caches."""

    name: str
    options: dict[str, Any]
    cache: dict[str, Any] = field(default_factory=dict)

    def option(self, key: str) -> Any:
        return self.options[key]

    def system(self, default: str | None) -> str | None:
        """The system prompt to use: the option when set (``""`` = none), else ``default``."""
        value = self.options.get("system")
        return resolve_system(default if value is None else value)


def resolve_system(value: str | None) -> str | None:
    """A system prompt, a preset name (``@...``) resolved, or ``None`` for empty."""
    if not value:
        return None
    if value.startswith("@"):
        if value not in SYSTEM_PRESETS:
            raise DataError(f"unknown system prompt preset {value!r}; known: {sorted(SYSTEM_PRESETS)}")
        return SYSTEM_PRESETS[value]
    return value


Body = Callable[[Mapping[str, Any], RowLocation, AdapterContext], dict[str, Any]]


def require(row: Mapping[str, Any], field_name: str, *alternatives: str) -> Any:
    """The first present, non-empty field among ``field_name`` and ``alternatives``, else a RowProblem."""
    for name in (field_name, *alternatives):
        value = row.get(name)
        if value is not None and (not isinstance(value, str) or value.strip()):
            return value
    names = " / ".join(repr(n) for n in (field_name, *alternatives))
    present = any(name in row for name in (field_name, *alternatives))
    raise RowProblem("empty field" if present else "missing field", f"field {names} is {'empty' if present else 'missing'}")


def chat(system: str | None, user: str, assistant: str) -> list[dict[str, str]]:
    """A single-turn conversation, with a system turn only when there is a system prompt."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages


@dataclass
class AdapterReport:
    """Rows an adapter skipped, per reason (first row number kept for the message)."""

    adapter: str
    file: str = ""
    seen: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    filtered: collections.Counter = field(default_factory=collections.Counter)
    first_row: dict[str, int] = field(default_factory=dict)
    table: str | None = None  # difficulty table coverage, e.g. "math_train.jsonl: 812 joined, 188 not found"

    def message(self) -> str | None:
        if not self.skipped and not self.filtered and not self.table:
            return None
        parts = [f"difficulty_table {self.table}"] if self.table else []
        if self.skipped:
            detail = ", ".join(f"{reason} ({n}; first at row {self.first_row[reason]})" for reason, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} bad row(s): {detail}")
        if self.filtered:
            detail = ", ".join(f"{reason} ({n})" for reason, n in sorted(self.filtered.items()))
            parts.append(f"left out {sum(self.filtered.values())} row(s) by option: {detail}")
        return f"{self.file}: adapter '{self.adapter}' read {self.seen} row(s); " + "; ".join(parts)


class BoundAdapter:
    """One adapter applied to one source: options fixed, bad rows handled by policy and counted."""

    def __init__(self, name: str, body: Body, options: dict[str, Any], source_name: str = "") -> None:
        self.name = name
        self.body = body
        self.context = AdapterContext(name, options)
        self.report = AdapterReport(name, source_name)
        self._seen_ids: dict[str, int] = {}
        table = options.get("difficulty_table")
        self.table = DifficultyTable.from_option(table) if table else None

    @property
    def policy(self) -> str:
        return self.context.options["bad_rows"]

    def __call__(self, row: Mapping[str, Any], where: RowLocation) -> dict[str, Any] | None:
        self.report.seen += 1
        if not self.report.file:
            self.report.file = where.file
        try:
            example = self._adapt(row, where)
        except RowFiltered as filtered:
            self.report.filtered[filtered.reason] += 1
            return None
        except RowProblem as problem:
            if self.policy == "error":
                raise DataError(
                    f"{where}: adapter '{self.name}': {problem.detail or problem.reason} [{problem.reason}]. "
                    "Fix the row, or set options.bad_rows: skip to skip such rows (they are counted)."
                ) from None
            self.report.skipped[problem.reason] += 1
            self.report.first_row.setdefault(problem.reason, where.row)
            return None
        return example

    def _adapt(self, row: Mapping[str, Any], where: RowLocation) -> dict[str, Any]:
        example = self.body(row, where, self.context)
        join_key = example.pop(JOIN_KEY, None)
        options = self.context.options
        example.setdefault("source", options.get("source") or self.name)
        if options.get("source"):
            example["source"] = options["source"]
        if options.get("category"):
            example["category"] = options["category"]
        if example.get("difficulty") is None and self.table is not None:
            level = self.table.lookup(join_key)
            if level is not None:
                example["difficulty"], example["difficulty_source"] = level, self.table.source
        try:
            checked = validate_example(example, where)
        except DataError as err:  # schema problems fall under the same policy as adapter problems
            raise RowProblem("invalid example", str(err).split(": ", 1)[-1]) from None
        if checked["id"] in self._seen_ids:
            raise RowProblem("duplicate example", f"same content as row {self._seen_ids[checked['id']]}")
        self._seen_ids[checked["id"]] = where.row
        return example

    def finish(self, file: str | None = None) -> AdapterReport:
        """Emit one summary warning if rows were skipped or filtered (or a table joined); return the counts."""
        if file:
            self.report.file = file
        if self.table is not None:
            self.report.table = f"{self.table.name}: {self.table.hits} row(s) joined, {self.table.misses} not found"
        message = self.report.message()
        if message:
            warnings.warn(message, stacklevel=2)
        return self.report


class OptionAdapter:
    """A registered adapter with options (see module docstring).

    Args:
        name: the ``adapter:`` name in YAML.
        body: ``fn(row, where, context) -> example dict``; raises :class:`RowProblem` /
            :class:`RowFiltered`.
        options: this adapter's own options and their defaults (besides :data:`COMMON_OPTIONS`).
        choices: allowed values of enumerated options, checked when binding (not at every row).
    """

    def __init__(
        self,
        name: str,
        body: Body,
        options: Mapping[str, Any] | None = None,
        choices: Mapping[str, Sequence[Any]] | None = None,
    ) -> None:
        self.name = name
        self.body = body
        self.defaults = {**COMMON_OPTIONS, **(options or {})}
        self.choices = {"bad_rows": BAD_ROWS, **(choices or {})}
        self.__doc__ = body.__doc__
        self._default: BoundAdapter | None = None

    def bind(self, options: Mapping[str, Any] | None = None, source_name: str = "") -> BoundAdapter:
        """A fresh adapter for one source; unknown or invalid options are errors naming the source."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        where = f"source '{source_name}': " if source_name else ""
        if unknown:
            raise DataError(f"{where}adapter '{self.name}' has no option(s) {unknown}; known: {sorted(self.defaults)}")
        merged = {**self.defaults, **options}
        for key, allowed in self.choices.items():
            if merged[key] not in allowed:
                raise DataError(f"{where}adapter '{self.name}': option {key} must be one of {tuple(allowed)}, got {merged[key]!r}")
        if isinstance(merged.get("system"), str):
            resolve_system(merged["system"])  # an unknown preset fails here, not at the first row
        return BoundAdapter(self.name, self.body, merged, source_name)

    def __call__(self, row: Mapping[str, Any], where: RowLocation) -> dict[str, Any] | None:
        """Plain-adapter use (default options): bad rows raise :class:`DataError`."""
        if self._default is None:
            self._default = self.bind()
        default = self._default
        default._seen_ids.clear()  # duplicates are load_source's business in this mode
        before = dict(default.report.filtered)
        example = default(row, where)
        for reason in set(default.report.filtered) - set(before):  # no summary in this mode: say it once
            warnings.warn(
                f"{where}: adapter '{self.name}' leaves out rows ({reason}); further ones are not reported "
                "one by one. Bind the adapter per source (load_source with adapter options) for a count.",
                stacklevel=2,
            )
        return example


def register(
    name: str, options: Mapping[str, Any] | None = None, choices: Mapping[str, Sequence[Any]] | None = None
) -> Callable[[Body], Body]:
    """Decorator: register an adapter body (``fn(row, where, context)``) under ``name`` with its options."""

    def wrap(body: Body) -> Body:
        ADAPTERS[name] = OptionAdapter(name, body, options, choices)
        return body

    return wrap
