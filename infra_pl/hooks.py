"""Public hook points of ``infra-pl attribute``: typed events when attribution products exist.

``attribute`` runs factors, then scores, then the report. After each product is complete (on
disk and in memory) it calls, on every callback in ``trainer.callbacks`` that defines it:

* ``on_factors_ready(trainer, pl_module, event: FactorsReady)``
* ``on_scores_ready(trainer, pl_module, event: ScoresReady)``
* ``on_report_ready(trainer, pl_module, event: ReportReady)``

so a user callback listed in the YAML next to ours can export, push or plot what it needs.
Subclass :class:`AttributionHooks` (a Lightning ``Callback`` with no-op hooks) or just define
the methods on any Callback. Hooks run on global rank 0 only, once the product is complete
(tables on other ranks may hold only that rank's shard), so a hook never needs a rank guard and
must not call collectives.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.callbacks import Callback

from infra_pl.products import (  # noqa: F401 - the events are part of this module's public surface
    AttributionEvent,
    AttributionState,
    FactorsReady,
    ReportReady,
    ScoresReady,
)


class AttributionHooks(Callback):
    """Base class for user callbacks that act on attribution products (all hooks are no-ops).

    Override any of the three; the callback can sit in ``trainer.callbacks`` for ``fit`` and
    ``validate`` too, where it does nothing unless it overrides Lightning's own hooks.
    """

    def on_factors_ready(self, trainer: Any, pl_module: Any, event: FactorsReady) -> None:
        """Called once the EK-FAC factors exist (fitted or reused)."""

    def on_scores_ready(self, trainer: Any, pl_module: Any, event: ScoresReady) -> None:
        """Called once instance (and token/sentence) scores exist."""

    def on_report_ready(self, trainer: Any, pl_module: Any, event: ReportReady) -> None:
        """Called once the report and its tables exist."""


def dispatch(trainer: Any, pl_module: Any, event: AttributionEvent) -> None:
    """Call ``event.hook`` on every callback that defines it, in list order, on global rank 0.

    A failing hook stops the run with the callback's name in the message: a silent skip would
    leave a user's export half-done without anyone noticing.
    """
    if not getattr(trainer, "is_global_zero", True):
        return
    for callback in list(getattr(trainer, "callbacks", [])):
        method = getattr(callback, event.hook, None)
        if not callable(method):
            continue
        try:
            method(trainer, pl_module, event)
        except Exception as err:
            print(f"[infra-pl] {type(callback).__name__}.{event.hook} failed: {err}", file=sys.stderr)
            raise


def tensorboard_writer(trainer: Any) -> Any | None:
    """The ``SummaryWriter`` of the run's TensorBoard logger, whichever position it has in ``loggers``.

    ``trainer.logger`` is only the first logger: with ``[CSVLogger, TensorBoardLogger]`` figures
    would silently go nowhere. None when no logger can take figures.
    """
    for logger in getattr(trainer, "loggers", None) or []:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure") and hasattr(experiment, "add_histogram"):
            return experiment
    return None
