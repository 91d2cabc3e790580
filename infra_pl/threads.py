"""Pick a sensible number of torch threads on small or shared CPU machines.

Why: on a 2-core box that other work shares, running 2 threads on a busy core made torch ops
up to 20x slower. Unless the user says otherwise, use the cores that the load average says
are free (at least one).
"""

from __future__ import annotations

import os

import torch

from infra_pl.allocator import limit_malloc_arenas


def choose_threads(requested: int | None = None) -> int:
    """Threads to use: ``requested``, else ``INFRA_PL_THREADS``/``OMP_NUM_THREADS``, else free cores."""
    for value in (requested, os.environ.get("INFRA_PL_THREADS"), os.environ.get("OMP_NUM_THREADS")):
        if value not in (None, ""):
            return max(1, int(value))
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def configure_threads(requested: int | None = None) -> int:
    """Set torch's thread count (see :func:`choose_threads`); with several threads, also cap malloc arenas."""
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    if threads > 1:
        limit_malloc_arenas()
    return threads
