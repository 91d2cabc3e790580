"""Scores on disk: Parquet part files written as a pass goes, merged into one table at the end.

Why parts: a scoring pass over a large training set can be interrupted; every flushed part
survives, and a resumed pass only scores the examples no part holds yet. Parts are keyed by a
fingerprint of what the scores depend on (factors, measurement directions), so parts from a
different setting are never mixed in. Each part has a ``.sha256`` file beside it, written before
the part, and checked before the part is read (:mod:`infra_pl.checksum`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from infra_pl.checksum import read_sidecar, readable, record, verify, write_sidecar


def _part_hint(part: Path) -> str:
    return (f"Delete {part} (and {part.name}.sha256 beside it) and run `infra-pl attribute` again: the pass scores "
            "again only the examples that part held")


class PartWriter:
    """Buffers rows and writes them as numbered Parquet parts (one writer per rank)."""

    def __init__(self, directory: Path, key: str, rank: int = 0, flush_rows: int = 512):
        self.directory = directory
        self.key = key
        self.rank = rank
        self.flush_rows = flush_rows
        self._rows: list[dict[str, Any]] = []
        directory.mkdir(parents=True, exist_ok=True)
        key_file = directory / "key.json"
        if key_file.exists() and json.loads(key_file.read_text()).get("key") != key:
            for part in directory.glob("part-*.parquet"):  # parts of another setting: not reusable
                part.unlink()
            for sidecar in directory.glob("part-*.parquet.sha256"):
                sidecar.unlink()
        if rank == 0:
            key_file.write_text(json.dumps({"key": key}))
        self._counter = len(list(directory.glob(f"part-r{rank}-*.parquet")))

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        self._rows.extend(rows)
        if len(self._rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows)
        target = self.directory / f"part-r{self.rank}-{self._counter:06d}.parquet"
        tmp = target.with_name("." + target.name + ".tmp")
        pq.write_table(table, tmp)
        write_sidecar(target, record(tmp))  # checksum first: every part on disk has one
        os.replace(tmp, target)  # a part on disk is always complete
        self._counter += 1
        self._rows = []


def read_parts(directory: Path, key: str) -> pa.Table | None:
    """All parts written under ``key`` as one table (None if there are none)."""
    key_file = directory / "key.json"
    if not key_file.exists() or json.loads(key_file.read_text()).get("key") != key:
        return None
    parts = sorted(directory.glob("part-*.parquet"))
    if not parts:
        return None
    return pa.concat_tables([read_part(p) for p in parts])


def read_part(part: Path) -> pa.Table:
    """One part file, checked against its ``.sha256`` (parts written before checksums: a notice)."""
    verify(part, read_sidecar(part), "scores part file", _part_hint(part))
    with readable(part, "scores part file", _part_hint(part)):
        return pq.read_table(part)


def read_shards(directory: str | Path) -> pa.Table | None:
    """Every rank's shards of one scores folder (e.g. ``scores/instance_parts``) as one table.

    Each rank of a distributed pass writes its own ``part-r<rank>-*.parquet`` files keyed by
    example ``id`` and ``index``; nothing is gathered in memory. This reader presents them as one
    Arrow table (rows of the folder's current key only; a resumed pass never writes a row twice).
    With module partitions, the per-partition sub-folders hold additive shares of the score.
    """
    directory = Path(directory)
    key_file = directory / "key.json"
    if not key_file.exists():
        return None
    return read_parts(directory, json.loads(key_file.read_text()).get("key"))


def done_indices(directory: Path, key: str, column: str = "index") -> set[int]:
    table = read_parts(directory, key)
    return set() if table is None else set(table.column(column).to_pylist())


def write_table(path: Path, table: Any, metadata: dict[str, Any] | None = None) -> Path:
    """Write a pandas DataFrame or Arrow table to Parquet atomically, with JSON metadata attached."""
    arrow = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    if metadata:
        existing = dict(arrow.schema.metadata or {})
        existing[b"infra_pl"] = json.dumps(metadata).encode()
        arrow = arrow.replace_schema_metadata(existing)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    pq.write_table(arrow, tmp)
    os.replace(tmp, path)
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """The infra-pl metadata stored in a scores Parquet file (measurement info, fallback labels)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"infra_pl", b"{}"))
