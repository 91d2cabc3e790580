"""Memory planner for EK-FAC attribution at 7B-14B scale (pure python/torch, no Lightning).

From a model config alone (built on the ``meta`` device), the tracked-module selection, dtypes and
batch shape, :func:`estimate` gives each phase's peak bytes per device, and :func:`plan_partitions`
groups the tracked modules into the fewest consecutive partitions that fit a budget. The command
``python -m infra_pl.planner`` (console script ``infra-pl-plan``) prints both as tables.
"""

from infra_pl.planner.estimate import PHASES, Estimate, PhaseCost, Settings, estimate, estimate_from_config
from infra_pl.planner.model import Architecture, TrackedModule, load_config, meta_model, tracked_modules
from infra_pl.planner.partition import PartitionError, Plan, format_bytes, parse_bytes, plan_partitions, usable_budget
from infra_pl.planner.report import plan_json, plan_table

__all__ = [
    "PHASES",
    "Architecture",
    "Estimate",
    "PartitionError",
    "PhaseCost",
    "Plan",
    "Settings",
    "TrackedModule",
    "estimate",
    "estimate_from_config",
    "format_bytes",
    "load_config",
    "meta_model",
    "parse_bytes",
    "plan_json",
    "plan_partitions",
    "plan_table",
    "tracked_modules",
    "usable_budget",
]
