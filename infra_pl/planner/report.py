"""The plan as text: sizes of the factors, per-phase peaks, and the partitions (Markdown tables).

Markdown so the same output reads in a terminal and pastes into a README or an issue.
"""

from __future__ import annotations

from typing import Any

import torch

from infra_pl.planner.estimate import Estimate
from infra_pl.planner.partition import Plan, format_bytes


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"


def plan_table(estimate: Estimate, plan: Plan | None, budget: int | None = None) -> str:
    """Header, the sizes table, the phase table (1 partition vs the plan) and the partition list."""
    s = estimate.settings
    arch = estimate.architecture
    lines = [
        f"Memory plan for {estimate.model_name}: {estimate.parameters / 1e9:.2f}B parameters "
        f"({format_bytes(estimate.weight_bytes)} in {_dtype(estimate.model_dtype)}), {arch.layers} layers, "
        f"vocab {arch.vocab}",
        f"tracked: {len(estimate.modules)} modules, "
        f"{sum(m.weight_elements for m in estimate.modules) / 1e9:.2f}B weights; factors in {_dtype(s.factor_dtype)}; "
        f"batch {s.batch_size} x {s.seq_len} tokens{' (padded)' if s.padding else ''}; "
        f"{s.measurements} measurement(s); {s.fisher} Fisher; "
        f"A and S {'kept on the device' if s.keep_covariance else 'off the device'} after the eigendecomposition"
        + ("; activation checkpointing" if s.activation_checkpointing else ""),
    ]
    if budget is not None and plan is not None:
        lines.append(f"budget {format_bytes(budget)} per device, {format_bytes(plan.budget)} usable after headroom")
    lines += ["", "| size (all tracked modules) | bytes |", "|---|---:|"]
    lines += [f"| {name} | {format_bytes(value)} |" for name, value in estimate.sizes.items()]
    one = estimate.peaks()
    header = "| phase | fixed (weights, batch, activations) | peak, 1 partition |"
    rule = "|---|---:|---:|"
    if plan is not None:
        header += f" peak, {len(plan.partitions)} partition(s) |"
        rule += "---:|"
    lines += ["", header, rule]
    for name, cost in estimate.phases.items():
        row = f"| {name} | {format_bytes(sum(cost.fixed.values()))} | {format_bytes(one[name])} |"
        if plan is not None:
            row += f" {format_bytes(max(p[name] for p in plan.peaks))} |"
        lines.append(row)
    if plan is not None:
        phase, peak = plan.largest_peak
        lines += ["", f"{len(plan.partitions)} partition(s); highest peak {format_bytes(peak)} ({phase}).", ""]
        lines += ["| partition | modules | tracked modules | highest peak |", "|---:|---:|---|---:|"]
        for index, (group, peaks) in enumerate(zip(plan.partitions, plan.peaks), start=1):
            worst = max(peaks, key=peaks.get)
            lines.append(f"| {index} | {len(group)} | {_span(group)} | {format_bytes(peaks[worst])} ({worst}) |")
    return "\n".join(lines)


def plan_json(estimate: Estimate, plan: Plan | None) -> dict[str, Any]:
    """Machine-readable plan: settings, sizes, per-phase peaks and the partitions (module names)."""
    s = estimate.settings
    return {
        "model": estimate.model_name,
        "parameters": estimate.parameters,
        "weight_bytes": estimate.weight_bytes,
        "model_dtype": _dtype(estimate.model_dtype),
        "settings": {
            "batch_size": s.batch_size,
            "seq_len": s.seq_len,
            "measurements": s.measurements,
            "factor_dtype": _dtype(s.factor_dtype),
            "fisher": s.fisher,
            "padding": s.padding,
            "keep_covariance": s.keep_covariance,
            "activation_checkpointing": s.activation_checkpointing,
        },
        "modules": estimate.module_names,
        "sizes": estimate.sizes,
        "peaks_one_partition": estimate.peaks(),
        "usable_budget": None if plan is None else plan.budget,
        "partitions": None if plan is None else plan.partitions,
        "partition_peaks": None if plan is None else plan.peaks,
    }
