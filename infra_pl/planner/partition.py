"""Group the tracked modules into the fewest partitions whose every phase fits a device budget.

A partition is a run of consecutive tracked modules (model order): the partitioned passes handle
one group at a time (its factors, captures and directions on the device), so a phase's peak is
``PhaseCost.peak(group)``. Every phase's peak only grows when a module is added to a group, so
greedy packing of consecutive modules (close the group when the next module would not fit) gives
the fewest consecutive groups. Consecutive groups keep each partition to a contiguous slice of
layers, which is what lazily loaded per-module factors want.

The result, ``Plan.partitions``, is a list of lists of module names: exactly what the partitioned
passes take.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra_pl.planner.estimate import Estimate

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
}


class PartitionError(ValueError):
    """The budget is too small even for one module (or for the model alone) in some phase."""


def parse_bytes(text: str | int | float) -> int:
    """``"80GiB"``, ``"80 GB"``, ``"512MiB"``, ``"1.5T"`` or a number of bytes -> bytes.

    Binary units (KiB, MiB, GiB, TiB, and the bare K/M/G/T) are powers of 1024; KB/MB/GB/TB are
    powers of 1000, as on GPU spec sheets.
    """
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 80GiB, 141GB or 512MiB")
        value, unit = float(match.group(1)), match.group(2).lower()
    result = int(value * _UNITS[unit])
    if result <= 0:
        raise ValueError(f"a memory budget must be positive, got {text!r}")
    return result


def format_bytes(value: int) -> str:
    """Bytes as GiB (or MiB / KiB for small values) with two decimals."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


@dataclass
class Plan:
    """Module partitions and the peak per phase of each (bytes)."""

    budget: int  # usable bytes (after headroom)
    partitions: list[list[str]]
    peaks: list[dict[str, int]]  # per partition: {phase: peak bytes}

    @property
    def largest_peak(self) -> tuple[str, int]:
        """(phase, bytes) of the highest peak over all partitions."""
        phase, value = "", 0
        for peaks in self.peaks:
            for name, peak in peaks.items():
                if peak > value:
                    phase, value = name, peak
        return phase, value


def usable_budget(budget: int, headroom: float) -> int:
    """The part of a device budget the plan may fill: ``headroom`` is left for fragmentation,
    the CUDA context and library workspaces, which the estimate does not count."""
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    return int(budget * (1.0 - headroom))


def plan_partitions(estimate: Estimate, budget: int, headroom: float = 0.0) -> Plan:
    """The fewest groups of consecutive tracked modules whose every phase peak is within budget.

    ``budget``: device bytes; ``headroom``: fraction of it kept free (see :func:`usable_budget`).
    Raises :class:`PartitionError` naming the phase when the model and one batch alone exceed the
    budget, or naming the module (and phase) that does not fit even on its own.
    """
    usable = usable_budget(budget, headroom)
    for name, cost in estimate.phases.items():
        floor = cost.peak([])
        if floor > usable:
            raise PartitionError(
                f"the {name} needs {format_bytes(floor)} before any module's factors (weights, one batch's "
                f"activations and logits), more than the usable {format_bytes(usable)}: lower the batch size or "
                "sequence length, shard the weights (FSDP), or use a larger device"
            )
    partitions: list[list[str]] = []
    current: list[str] = []
    for module in estimate.module_names:
        trial = current + [module]
        if _fits(estimate, trial, usable):
            current = trial
            continue
        if not current:
            phase, peak = _worst(estimate, [module])
            raise PartitionError(
                f"module {module!r} does not fit on its own: the {phase} needs {format_bytes(peak)} with it alone, "
                f"more than the usable {format_bytes(usable)}"
            )
        partitions.append(current)
        current = [module]
        if not _fits(estimate, current, usable):
            phase, peak = _worst(estimate, current)
            raise PartitionError(
                f"module {module!r} does not fit on its own: the {phase} needs {format_bytes(peak)} with it alone, "
                f"more than the usable {format_bytes(usable)}"
            )
    if current:
        partitions.append(current)
    return Plan(usable, partitions, [estimate.peaks(group) for group in partitions])


def _fits(estimate: Estimate, modules: list[str], usable: int) -> bool:
    return all(cost.peak(modules) <= usable for cost in estimate.phases.values())


def _worst(estimate: Estimate, modules: list[str]) -> tuple[str, int]:
    peaks = estimate.peaks(modules)
    phase = max(peaks, key=peaks.get)
    return phase, peaks[phase]
