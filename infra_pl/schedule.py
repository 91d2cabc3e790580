"""Learning-rate schedule: linear warmup then cosine decay, on steps or on wall-clock time.

The default runs on optimizer steps (``trainer.max_steps``): the run length, and so the model,
is then a function of the seed and thread count alone, not of how busy the machine is.

Why a wall-clock option (``SFTModule(time_budget_s=...)``, opt-in): on a shared machine the
number of steps that fit in a time budget is unknown in advance. If the schedule is defined on
steps and the run is stopped by ``max_time`` first, the learning rate never anneals and the
final model is noticeably worse. Progress = max(step fraction, time fraction) guarantees the
cosine reaches its floor by whichever limit comes first; the steps taken are then recorded.
"""

from __future__ import annotations

import math
import time
from typing import Callable


def warmup_cosine(progress: float, warmup: float, min_ratio: float) -> float:
    """LR multiplier at ``progress`` in [0, 1]: linear warmup to 1, cosine down to ``min_ratio``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    span = max(1.0 - warmup, 1e-8)
    cosine = 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / span))
    return min_ratio + (1.0 - min_ratio) * cosine


class ProgressClock:
    """Fraction of the run completed, by steps and (optionally) by elapsed seconds."""

    def __init__(self, total_steps: int, time_budget_s: float | None, clock: Callable[[], float] = time.monotonic):
        self.total_steps = max(int(total_steps), 1)
        self.time_budget_s = time_budget_s
        self._clock = clock
        self._start: float | None = None

    def start(self) -> None:
        self._start = self._clock()

    def progress(self, step: int) -> float:
        fraction = step / self.total_steps
        if self.time_budget_s and self._start is not None:
            fraction = max(fraction, (self._clock() - self._start) / self.time_budget_s)
        return fraction
