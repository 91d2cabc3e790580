"""Helpers for the adapter tests: hand-written hub-schema fixtures, loaded the ways users load data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infra_pl.data.chat_encoding import IGNORE_INDEX, tokenize_chat
from infra_pl.data.schema import RowLocation, validate_examples
from infra_pl.data.sources import ADAPTERS, Source, load_source, read_raw_rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hub"


def fixture(name: str) -> Path:
    return FIXTURES / name


def load(name: str, adapter: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Through ``load_source`` with a local JSONL path, exactly as a YAML source would."""
    return load_source(Source(str(fixture(name)), adapter=adapter, **kwargs))


def to_parquet(name: str, tmp_path: Path) -> Path:
    """The fixture as Parquet (nested lists/structs kept), to load it the Parquet way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in fixture(name).read_text(encoding="utf-8").splitlines() if line.strip()]
    path = tmp_path / (Path(name).stem + ".parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def load_bound(name: str, adapter: str, options: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """The adapter bound to ``options`` over the fixture's raw rows: the per-source path that
    ``load_source`` takes once it binds options (usable before that change lands)."""
    bound = ADAPTERS[adapter].bind(options, name)
    file, rows = read_raw_rows(Source(str(fixture(name))))
    adapted = []
    for number, raw in rows:
        example = bound(raw, RowLocation(file, number))
        if example is not None:
            adapted.append((number, example))
    report = bound.finish(file)
    return validate_examples(adapted, file), report


def load_with_datasets(monkeypatch, tmp_path: Path, data_file: Path, adapter: str, builder: str = "json") -> list[dict]:
    """Through ``load_source``'s hub branch: ``datasets.load_dataset(builder, data_files=...)``.

    The packaged ``json``/``parquet`` builders need ``data_files``, which ``Source`` has no field
    for, so the call is wrapped to add it (and a private cache dir); everything else is the real
    hub code path, including the row types ``datasets`` produces (e.g. missing keys as ``None``).
    """
    import datasets

    real = datasets.load_dataset

    def with_files(path, name=None, **kwargs):
        assert path == builder
        return real(path, name, data_files=str(data_file), cache_dir=str(tmp_path / "hf_cache"), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", with_files)
    return load_source(Source(builder, adapter=adapter, split="train"))


def assert_prompt_masked(tokenizer: Any, example: dict[str, Any]) -> None:
    """Only the assistant turn (plus end-of-turn) carries loss; the prompt ends at the assistant tag."""
    tokenized = tokenize_chat(tokenizer, example["messages"], max_length=100_000)
    assert tokenized is not None
    targets = [t for t in tokenized.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(targets) == example["messages"][-1]["content"] + "<|end|>"
    assert tokenizer.decode(tokenized.prompt_ids).endswith("<|assistant|>\n")
    first = next(i for i, t in enumerate(tokenized.labels) if t != IGNORE_INDEX)
    assert tokenized.input_ids[:first] == tokenized.prompt_ids
