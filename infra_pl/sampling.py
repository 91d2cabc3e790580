"""Seeded samples of a training set that keep its composition (domain, difficulty) in proportion.

Used wherever a pass may run on part of the data: the factor fit's covariance and lambda passes
(``FactorOptions.covariance_max_examples``) and the refinement's Fisher (``ScoreOptions.refine_examples``).
"""

from __future__ import annotations

import random
from typing import Any, Sequence


def sample_size(wanted: int | float | None, total: int, option: str) -> int | None:
    """How many of ``total`` examples: a count, a fraction in (0, 1], or None (all). None when it is all."""
    if wanted is None:
        return None
    if isinstance(wanted, bool) or not isinstance(wanted, (int, float)) or wanted <= 0:
        raise ValueError(f"{option} must be a positive count, a fraction in (0, 1], or null; got {wanted!r}")
    if isinstance(wanted, float):
        if wanted > 1:
            raise ValueError(f"{option}: a fraction must be at most 1, got {wanted}")
        count = max(1, round(wanted * total))
    else:
        count = wanted
    return None if count >= total else count


def stratified_sample(strata: Sequence[Any], n: int, seed: int) -> list[int]:
    """``n`` indices drawn without replacement, each stratum in proportion to its size (seeded, sorted).

    Largest-remainder rounding keeps the total exactly ``n``; every stratum gets at least one when
    ``n`` allows, so a small domain (or difficulty level) is never left out.
    """
    groups: dict[Any, list[int]] = {}
    for index, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(index)
    total = len(strata)
    if n >= total:
        return list(range(total))
    quotas = {s: n * len(members) / total for s, members in groups.items()}
    counts = {s: min(len(groups[s]), max(1, int(q))) for s, q in quotas.items()}
    order = sorted(groups, key=lambda s: (quotas[s] - int(quotas[s]), str(s)), reverse=True)
    while sum(counts.values()) < n:
        for s in order:
            if sum(counts.values()) < n and counts[s] < len(groups[s]):
                counts[s] += 1
    while sum(counts.values()) > n:
        largest = max(sorted(counts, key=str), key=lambda s: counts[s])
        counts[largest] -= 1
    rng = random.Random(seed)
    return sorted(i for s in sorted(groups, key=str) for i in rng.sample(groups[s], counts[s]))


def data_strata(data: Any, keys: Sequence[str]) -> list[Any] | None:
    """Per training example, its ``keys`` from ``data.attribution_metadata("train")`` (the bare value for one
    key, a tuple for several); None when the data has no metadata."""
    if not callable(getattr(data, "attribution_metadata", None)):
        return None
    rows = data.attribution_metadata("train")
    if len(keys) == 1:
        return [row.get(keys[0]) for row in rows]
    return [tuple(row.get(k) for k in keys) for row in rows]


def sample_indices(strata: Sequence[Any], wanted: int | float | None, seed: int, option: str) -> list[int] | None:
    """The seeded stratified sample that ``option`` (a count, a fraction or None) asks for; None: every example."""
    count = sample_size(wanted, len(strata), option)
    return None if count is None else stratified_sample(strata, count, seed)
