"""Module partitions: fit and use EK-FAC factors one group of tracked layers at a time.

Why: at 7B–14B scale the factors of all MLP layers do not fit one device (Llama-3-8B: S alone is
0.8 GB per 14336-wide module in float32, and there are 96 tracked modules). Every quantity EK-FAC
needs is per module -- A, S, their eigenbases, Λ, the preconditioned directions -- and every score
is a sum over modules, so a run can handle one group of modules per pass and add the groups'
partial scores. Peak memory is then bounded by the largest group; the price is one set of data
passes per group.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from infra_pl.ekfac.modules import LayerShape


def factor_elements(shape: LayerShape) -> int:
    """Elements EK-FAC stores for one module: A and Q_A (in²), S and Q_S (out²), Λ (out·in)."""
    return 2 * shape.in_dim * shape.in_dim + 2 * shape.out_features * shape.out_features + shape.out_features * shape.in_dim


def split_modules(shapes: Mapping[str, LayerShape], n_partitions: int) -> list[list[str]]:
    """Contiguous groups of modules (in model order) with balanced factor sizes.

    Contiguous, because a group's passes then touch neighbouring layers (easier to read in logs
    and to map onto pipeline or FSDP units); balanced by :func:`factor_elements`, because the
    largest group sets the peak memory. A greedy sweep closes a group once it reaches its share of
    the remaining elements, never leaving a later group empty.
    """
    names = list(shapes)
    if n_partitions < 1:
        raise ValueError(f"the number of partitions must be at least 1, got {n_partitions}")
    if n_partitions > len(names):
        raise ValueError(f"{n_partitions} partitions requested but only {len(names)} modules are tracked")
    sizes = [factor_elements(shapes[n]) for n in names]
    groups: list[list[str]] = []
    start = 0
    for k in range(n_partitions):
        remaining_groups = n_partitions - k
        if remaining_groups == 1:
            groups.append(names[start:])
            break
        target = sum(sizes[start:]) / remaining_groups
        stop, total = start, 0
        # Take modules while under the target, leaving at least one module per later group.
        while stop < len(names) - (remaining_groups - 1) and (total == 0 or total + sizes[stop] / 2 <= target):
            total += sizes[stop]
            stop += 1
        groups.append(names[start:stop])
        start = stop
    return groups


def check_partitions(partitions: Sequence[Sequence[str]], tracked: Sequence[str]) -> list[list[str]]:
    """Validate user-given groups: every tracked module in exactly one non-empty group."""
    groups = [list(g) for g in partitions]
    if any(not g for g in groups):
        raise ValueError("module partitions must not be empty")
    seen: dict[str, int] = {}
    for k, group in enumerate(groups):
        for name in group:
            if name in seen:
                raise ValueError(f"module {name!r} is in partitions {seen[name]} and {k}; each module must be in one")
            seen[name] = k
    unknown = [n for n in seen if n not in set(tracked)]
    missing = [n for n in tracked if n not in seen]
    if unknown or missing:
        raise ValueError(f"module partitions do not match the tracked modules (unknown: {unknown}; missing: {missing})")
    return groups
