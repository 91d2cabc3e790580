"""Subset draws and the resumable retrain loop.

Every retrain is identified by (the sorted example indices, the training seed) under one setting
folder, and its result is one small JSON file written atomically when the retrain finishes. A
loop that is interrupted (or a later experiment that needs the same retrain, e.g. the full set
with seed 0) reads finished results back instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def draw_subsets(n: int, alpha: float, count: int, seed: int) -> list[list[int]]:
    """``count`` random subsets of round(alpha·n) of range(n), each sorted; subset j depends only on (seed, j)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    size = round(alpha * n)
    if not 0 < size < n:
        raise ValueError(f"alpha={alpha} of {n} examples gives an empty or full subset ({size})")
    if count < 1:
        raise ValueError(f"the number of subsets must be >= 1, got {count}")
    return [sorted(np.random.default_rng([seed, j]).choice(n, size=size, replace=False).tolist()) for j in range(count)]


def subset_digest(indices: Sequence[int]) -> str:
    """Order-free hash of a set of example indices."""
    text = ",".join(str(i) for i in sorted({int(i) for i in indices}))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


@dataclass
class RetrainRecord:
    """What one retrain produced: the measurements on the retrained model, and provenance."""

    subset: str  # subset_digest of the training indices
    seed: int
    n_examples: int
    item_log_likelihood: list[float]  # log p(q) per measurement item, in measurement order
    f: dict[str, float]  # per measurement: mean of its items' log-likelihoods (paper Eq. 6)
    final_loss: float  # mean training loss over the last 10 steps
    seconds: float
    steps: int | None = None  # optimiser steps the retrain took (None: a record written before they were kept)
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class RetrainStore:
    """One JSON file per finished retrain under ``directory``, named by subset digest and seed."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, indices: Sequence[int], seed: int) -> Path:
        return self.directory / f"{subset_digest(indices)}_seed{int(seed)}.json"

    def get(self, indices: Sequence[int], seed: int) -> RetrainRecord | None:
        path = self.path(indices, seed)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as err:  # a torn file cannot happen with atomic writes, but say so if it does
            raise ValueError(f"retrain result {path} is not valid JSON ({err}); delete it to redo that retrain") from None
        return RetrainRecord(**data)

    def put(self, record: RetrainRecord) -> Path:
        path = self.directory / f"{record.subset}_seed{record.seed}.json"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".retrain.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record.to_dict(), handle)
        os.replace(tmp, path)
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*_seed*.json"))


RetrainFn = Callable[[Sequence[int], int], RetrainRecord]


@dataclass
class RetrainJob:
    label: str
    indices: list[int]
    seed: int


def run_retrains(
    jobs: Sequence[RetrainJob],
    store: RetrainStore,
    retrain: RetrainFn,
    log: Callable[[str], None] = print,
) -> list[RetrainRecord]:
    """Results of every job, in order: read from ``store`` when finished before, else retrained and saved.

    Each finished retrain is written before the next starts, so an interrupted loop loses at
    most the retrain in progress.
    """
    records: list[RetrainRecord] = []
    todo = sum(1 for job in jobs if store.get(job.indices, job.seed) is None)
    done = 0
    for job in jobs:
        record = store.get(job.indices, job.seed)
        if record is None:
            start = time.perf_counter()
            record = retrain(job.indices, job.seed)
            store.put(record)
            done += 1
            steps = f"{record.steps} steps, " if record.steps is not None else ""
            log(f"retrain {done}/{todo} ({job.label}, {len(job.indices)} examples, seed {job.seed}): "
                f"{steps}{time.perf_counter() - start:.1f} s, f = " + ", ".join(f"{k} {v:.4f}" for k, v in record.f.items()))
        records.append(record)
    return records
