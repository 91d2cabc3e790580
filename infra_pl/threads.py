"""Torch thread counts for the CLI: fixed for ``fit``/``validate``, load-based for ``attribute``.

Why fixed for training: the thread count changes the floating-point summation order of the
gradient reductions (weight gradients sum over the batch's tokens, split between threads), so a
fit with 1 thread and one with 2 threads train different weights (measured on this CPU: after 20
steps of the demo-sized model every tensor differed, by up to 1.7e-6, and the gap grows with
training). Picking the count from the load average therefore made the same command train
different models on a busy and an idle machine. ``fit`` and ``validate`` use
:data:`FIXED_DEFAULT_THREADS` unless ``--threads``, ``INFRA_PL_THREADS`` or ``OMP_NUM_THREADS``
says otherwise, so the model depends on the seed and the thread count, never on the load; a
constant (not the core count) also keeps the default the same on a 2-core and a 64-core machine.

``attribute`` keeps using the cores the load average says are free (at least one): on a 2-core
box that other work shares, 2 threads on a busy core made torch ops several times slower. Its
factor and score sums then differ across thread counts in float summation order only (last bits);
``--threads`` pins them.
"""

from __future__ import annotations

import os

import torch

from infra_pl.allocator import limit_malloc_arenas

FIXED_DEFAULT_THREADS = 1
"""Threads for ``fit``/``validate`` when nothing is requested (results depend on the thread count)."""


def _explicit_threads(requested: int | None) -> int | None:
    for value in (requested, os.environ.get("INFRA_PL_THREADS"), os.environ.get("OMP_NUM_THREADS")):
        if value not in (None, ""):
            return max(1, int(value))
    return None


def free_cores() -> float:
    """Cores minus the 1-minute load average (may be negative on an oversubscribed machine)."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return cores - busy


def choose_threads(requested: int | None = None, *, by_load: bool = False) -> int:
    """Threads to use: ``requested``, else ``INFRA_PL_THREADS``/``OMP_NUM_THREADS``, else the default.

    The default is :data:`FIXED_DEFAULT_THREADS` (independent of machine load), or with
    ``by_load=True`` the free cores (:func:`free_cores`, rounded, at least one).
    """
    explicit = _explicit_threads(requested)
    if explicit is not None:
        return explicit
    if not by_load:
        return FIXED_DEFAULT_THREADS
    cores = os.cpu_count() or 1
    return max(1, min(cores, round(free_cores())))


def busy_warning(threads: int) -> str | None:
    """A one-line warning when ``threads`` exceeds the free cores (then each op waits for a busy core)."""
    if threads <= 1:
        return None
    free = free_cores()
    if threads <= max(1, round(free)):
        return None
    return (
        f"{threads} threads on a busy machine run slower (load {(os.cpu_count() or 1) - free:.1f} on "
        f"{os.cpu_count() or 1} cores); results do not depend on load, only on the thread count"
    )


def configure_threads(requested: int | None = None, *, by_load: bool = False) -> int:
    """Set torch's thread count (see :func:`choose_threads`); with several threads, also cap malloc arenas."""
    threads = choose_threads(requested, by_load=by_load)
    torch.set_num_threads(threads)
    if threads > 1:
        limit_malloc_arenas()
    return threads


LOAD_BASED_SUBCOMMANDS = frozenset({"attribute"})
"""Subcommands whose outputs are insensitive to load (float summation order aside): threads follow free cores."""


def configure_for_subcommand(subcommand: str | None, requested: int | None = None) -> tuple[int, list[str]]:
    """Set the threads of one CLI subcommand; returns them and the lines the CLI prints."""
    by_load = subcommand in LOAD_BASED_SUBCOMMANDS
    explicit = _explicit_threads(requested) is not None
    threads = configure_threads(requested, by_load=by_load)
    if explicit:
        how = "requested"
    elif by_load:
        how = "the cores the load average leaves free; --threads N fixes it"
    else:
        how = ("fixed default: the model depends on the seed and the thread count, not on machine load; "
               "--threads N or INFRA_PL_THREADS=N for more cores")
    lines = [f"[infra-pl] {subcommand or 'run'}: {threads} torch thread(s) ({how})"]
    warning = busy_warning(threads)
    if warning:
        lines.append(f"[infra-pl] warning: {warning}")
    return threads, lines
