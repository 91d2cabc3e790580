"""Build a joinable difficulty table from the datasets the training problems came from.

Why: Bespoke-Stratos-17k (and OpenThoughts-114k) rows carry no difficulty, but their problems come
from sets that do: MATH (``level``), TACO (``difficulty``: EASY … VERY_HARD), APPS
(``difficulty``: introductory / interview / competition), OpenThoughts3-style rows (an integer
``difficulty``). A table keyed by problem text lets ``data.difficulty`` join a real level to each
training example (:class:`infra_pl.data.difficulty.DifficultyTable`) instead of falling back to
trace-length quantiles.

Usage (each ``--source`` names a dataset and its problem and level columns)::

    infra-pl-difficulty-table --out data/difficulty_levels.jsonl \\
        --source path=BAAI/TACO,split=train,key=question,level=difficulty \\
        --source path=codeparrot/apps,split=train,key=question,level=difficulty \\
        --source path=EleutherAI/hendrycks_math,config=algebra,split=train,key=problem,level=level

``path`` is a hub dataset or a local .jsonl/.json/.parquet file (read like any data source). A
problem listed by two sources with different levels keeps the first and is counted as a conflict
(the scales of different sources are not the same scale: the output records each row's source).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from infra_pl.data.difficulty import normalise_key, parse_level
from infra_pl.data.schema import DataError
from infra_pl.data.sources import Source, read_raw_rows

__all__ = ["TableSource", "TableSummary", "build_difficulty_table", "main", "parse_source"]


@dataclass
class TableSource:
    """One dataset to read levels from: where it is and which columns hold problem and level."""

    path: str
    key: str = "problem"
    level: str = "level"
    split: str = "train"
    config: str | None = None
    data_files: str | None = None

    @property
    def name(self) -> str:
        return Path(self.path).name if Path(self.path).suffix else self.path


@dataclass
class TableSummary:
    """What the build found, per source: rows read, levels kept, rows without a level, conflicts."""

    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def describe(self) -> str:
        return "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                         for name, counts in self.per_source.items())


def parse_source(text: str) -> TableSource:
    """``path=...,key=...,level=...[,split=...][,config=...][,data_files=...]`` -> :class:`TableSource`."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        if "=" not in part:
            raise DataError(f"--source {text!r}: expected key=value pairs separated by commas, got {part!r}")
        name, value = part.split("=", 1)
        fields[name.strip()] = value.strip()
    allowed = {"path", "key", "level", "split", "config", "data_files"}
    unknown = sorted(set(fields) - allowed)
    if unknown or "path" not in fields:
        raise DataError(f"--source {text!r}: needs path=..., may have {sorted(allowed - {'path'})}; unknown {unknown}")
    return TableSource(**fields)


def build_difficulty_table(sources: Sequence[TableSource]) -> tuple[list[dict[str, Any]], TableSummary]:
    """Rows ``{problem, level, source}`` from every source, first source winning on conflicts."""
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    summary = TableSummary()
    for spec in sources:
        counts = {"rows": 0, "levels": 0, "no_level": 0, "duplicates": 0, "conflicts": 0}
        source = Source(path=spec.path, split=spec.split, config_name=spec.config, data_files=spec.data_files)
        name, raw_rows = read_raw_rows(source)
        for number, row in raw_rows:
            counts["rows"] += 1
            if spec.key not in row or spec.level not in row:
                raise DataError(f"{name}, row {number}: needs columns '{spec.key}' and '{spec.level}', has {sorted(row)}")
            try:
                level = parse_level(row[spec.level])
            except ValueError as err:
                raise DataError(f"{name}, row {number}: column '{spec.level}': {err}") from None
            if level is None or not str(row[spec.key] or "").strip():
                counts["no_level"] += 1
                continue
            key = normalise_key(row[spec.key])
            if key in seen:
                counts["duplicates" if seen[key] == level else "conflicts"] += 1
                continue
            seen[key] = level
            rows.append({"problem": row[spec.key], "level": level, "source": spec.name})
            counts["levels"] += 1
        summary.per_source[spec.name] = counts
    if not rows:
        raise DataError("no source gave a single level: check the key and level column names")
    return rows, summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra-pl-difficulty-table",
        description="Join difficulty levels from source datasets (MATH, TACO, APPS, ...) into one table keyed by "
                    "problem text, for data.difficulty.table.",
    )
    parser.add_argument("--source", action="append", required=True, type=parse_source,
                        help="path=<hub id or file>,key=<problem column>,level=<level column>[,split=][,config=]"
                             "[,data_files=]; repeat for several datasets (the first wins on conflicts)")
    parser.add_argument("--out", required=True, help="output .jsonl (columns problem, level, source)")
    args = parser.parse_args(argv)
    try:
        rows, summary = build_difficulty_table(args.source)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} problems with a level -> {out} ({summary.describe()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
