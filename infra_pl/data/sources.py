"""Where examples come from: the embedded demo, local JSONL/Parquet files, or ``datasets`` hubs.

Every source goes through one path: raw rows -> adapter (source schema -> our schema) ->
:func:`validate_examples`. Adapters are looked up by name in ``ADAPTERS`` (the registry lives in
:mod:`infra_pl.data.adapter_base`; importing this module imports the adapters, which register
themselves there); the identity adapter ``"infra"`` accepts rows already in our schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

# Importing the adapter modules registers their adapters: the training sets', then the evaluation sets'.
from infra_pl.data import adapters as _adapters  # noqa: F401
from infra_pl.data import eval_adapters as _eval_adapters  # noqa: F401
from infra_pl.data.adapter_base import ADAPTERS, Adapter, register_adapter
from infra_pl.data.schema import DataError, RowLocation, validate_examples

__all__ = ["ADAPTERS", "DEMO_SPLITS", "Adapter", "Source", "bind_adapter", "load_source", "read_raw_rows", "register_adapter"]

DEMO_SPLITS = ("train", "eval_math", "eval_code", "pool")


@dataclass
class Source:
    """One data source.

    Args:
        path: ``demo:<split>`` (one of train, eval_math, eval_code, pool), a local ``.jsonl``/
            ``.json``/``.parquet`` file, or a ``datasets`` hub name / loading script.
        adapter: how rows map to the example schema (``infra`` = already in the schema).
        split: split name for hub datasets (local files have one split).
        config_name: hub dataset configuration (e.g. ``main`` for GSM8K).
        revision: pinned hub revision, for reproducible runs.
        limit: keep only the first ``limit`` examples (after adaptation).
        options: adapter-specific settings (e.g. ``{"bad_rows": "skip"}``; see each adapter).
        data_files: files for a packaged ``datasets`` builder (``path: json`` / ``parquet``), local
            or ``hf://datasets/...`` (e.g. one LiveCodeBench release file).
    """

    path: str = "demo:train"
    adapter: str = "infra"
    split: str = "train"
    config_name: str | None = None
    revision: str | None = None
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    data_files: str | list[str] | None = None


def _json_problem(err: json.JSONDecodeError, where: str) -> str:
    """``Expecting value at column 7``; messages that end in "at" ("Unterminated string starting
    at") take the position without a second "at"."""
    return f"{err.msg}{'' if err.msg.endswith(' at') else ' at'} {where}"


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, row {line_number}: malformed JSON ({_json_problem(err, f'column {err.colno}')})") from None


def _read_local(path: Path) -> Iterator[tuple[int, Any]]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: malformed JSON ({_json_problem(err, f'line {err.lineno}')})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        yield from enumerate(data, start=1)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json or .parquet)")


def _read_hub(source: Source) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        extra = {} if source.data_files is None else {"data_files": source.data_files}
        dataset = datasets.load_dataset(
            source.path, source.config_name, split=source.split, revision=source.revision, **extra
        )
    except Exception as err:  # noqa: BLE001 - datasets raises many types; the user needs the cause
        raise DataError(f"could not load dataset '{source.path}' (split {source.split}): {err}") from err
    yield from enumerate(dataset, start=1)


def read_raw_rows(source: Source, demo_files: Mapping[str, Path] | None = None) -> tuple[str, Iterable[tuple[int, Any]]]:
    """The rows of a source before adaptation, with a display name for error messages."""
    if source.path.startswith("demo:"):
        split = source.path.split(":", 1)[1]
        if split not in DEMO_SPLITS:
            raise DataError(f"unknown demo split '{split}' in source '{source.path}'; choose from {DEMO_SPLITS}")
        if demo_files is None:
            raise DataError(f"source '{source.path}' needs the demo files; none were generated")
        path = Path(demo_files[split])
        return str(path), _read_jsonl(path)
    local = Path(source.path).expanduser()
    if source.data_files is None and (local.suffix.lower() in {".jsonl", ".json", ".parquet"} or local.is_file()):
        return str(local), _read_local(local)
    return source.path, _read_hub(source)


def bind_adapter(source: Source) -> Adapter:
    """The adapter for one source, with the source's ``options`` applied.

    Adapters with options (``infra_pl.data.adapter_base.OptionAdapter``) get a fresh instance per
    source, holding its options and its own count of skipped rows. Plain functions take no
    options, so options given to them are an error rather than silently ignored.
    """
    if source.adapter not in ADAPTERS:
        raise DataError(f"unknown adapter '{source.adapter}' for source '{source.path}'; known: {sorted(ADAPTERS)}")
    adapter = ADAPTERS[source.adapter]
    bind = getattr(adapter, "bind", None)
    if bind is not None:
        return bind(source.options, source.path)
    if source.options:
        raise DataError(f"adapter '{source.adapter}' takes no options, got {sorted(source.options)} (source '{source.path}')")
    return adapter


def load_source(source: Source, demo_files: Mapping[str, Path] | None = None) -> list[dict[str, Any]]:
    """Load, adapt and validate one source. Errors name the file, the row and the field."""
    adapter = bind_adapter(source)
    name, rows = read_raw_rows(source, demo_files)
    adapted: list[tuple[int, dict[str, Any]]] = []
    for row_number, raw in rows:
        where = RowLocation(name, row_number)
        if not isinstance(raw, Mapping):
            raise DataError(f"{where}: expected an object per row, got {type(raw).__name__}")
        row = adapter(raw, where)
        if row is None:  # the adapter chose to skip this row (and counted it)
            continue
        adapted.append((row_number, row))
        if source.limit is not None and len(adapted) >= source.limit:
            break
    finish = getattr(adapter, "finish", None)
    if finish is not None:
        finish(name)  # one summary warning: rows skipped or left out, per reason
    examples = validate_examples(adapted, name)
    if not examples:
        raise DataError(f"{name}: no examples (empty source or split)")
    return examples
