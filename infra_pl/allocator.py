"""glibc allocator settings for attribution: fewer arenas, free heap returned between passes, and
large buffers mapped one by one during the token-score pass (:func:`mmap_large_buffers`).

Both keep the resident set of a long ``attribute`` run close to its live memory; the arena cap
(:func:`limit_malloc_arenas`, applied by the CLI with several threads) is explained on the function.

Why the trim (:func:`release_free_heap`): the passes allocate large, short-lived buffers of many sizes (activations, per-sequence
gradients, logits). glibc keeps freed chunks inside its heap, and later buffers of other sizes do
not always fit the holes, so the resident set of a long ``attribute`` run drifts upward although
the live memory does not. On the fixed benchmark model (2 threads, one malloc arena), a pairwise
pass left 316 MB of free-but-resident heap behind (787 → 471 MB after trimming), and a token pass
started after several other passes peaked 150 MB above the same pass in a fresh process.
``malloc_trim(0)`` returns those free pages (it also releases whole free pages in the middle of
the heap, not just at its top). It costs well under a millisecond, so the passes call it once at
their start and end, never per batch: re-faulting pages for every batch would cost time.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from functools import lru_cache
from typing import Iterator


@lru_cache(maxsize=1)
def glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (has ``malloc_trim``), else None; loaded once."""
    # glibc's soname first: ``find_library`` may spawn ``ldconfig``, so it is only the fallback.
    for find in (lambda: "libc.so.6", lambda: ctypes.util.find_library("c")):
        name = find()
        if not name:
            continue
        try:
            libc = ctypes.CDLL(name)
            libc.malloc_trim  # noqa: B018  (raises AttributeError on musl, macOS, Windows)
            return libc
        except (OSError, AttributeError):
            continue
    return None


def release_free_heap() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``); whether anything was released.

    A no-op returning False where the C library has no ``malloc_trim``. Live tensors are untouched.
    """
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's malloc arenas (``MALLOC_ARENA_MAX`` unless set, else ``arenas``, default 1).

    Why: with several torch threads, glibc gives worker threads their own arenas, and the large,
    short-lived buffers of the attribution passes fragment them: measured on the fixed benchmark
    model (2 threads, token scores over 16 batches, 6 repeats) the resident set grew from 830 to
    958 MB, while with one arena it stayed at 689 MB. Speed was unchanged within noise. Returns
    whether the cap was applied (glibc only; a no-op elsewhere or when the environment sets it).
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, int(arenas or 1)))


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20  # the ceiling of glibc's own (dynamic) threshold on 64-bit
LARGE_BUFFER_BYTES = 2**20
_MMAP_LOCK = threading.Lock()
_MMAP_USERS = 0


@contextlib.contextmanager
def mmap_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> Iterator[bool]:
    """Inside the block, glibc serves every allocation of ``threshold`` bytes or more with its own
    mmap, returned to the OS when freed; yields whether the setting was applied.

    Why, and why only around the token-score pass: glibc's dynamic threshold soon rises to tens of
    MB, so the forward-mode token pass (primal and tangent logits, log-softmaxes, dual
    activations, all a few MB to tens of MB) is served from the heap, where its mix of sizes does not
    fit the holes of earlier batches and the heap top keeps growing. Measured on the fixed benchmark
    model (2 threads, 256 sequences, 4 repeats): live memory peaked at 335 MB while the heap held
    765–831 MB, an RSS peak of 895–993 MB; with a 1 MiB threshold the heap stayed at 337 MB and
    the peak at 665–693 MB, at the same speed (2.73–3.05 against 2.82–3.57 s). The streamed factor
    and instance passes were 10–16% slower with it (two threads mapping and unmapping at once),
    so they keep glibc's default. On exit the threshold goes to glibc's dynamic ceiling (32 MiB),
    which the default reaches anyway once a few large buffers have been freed. Nested and
    concurrent uses share one setting (reference-counted). A no-op off glibc or when the
    environment sets ``MALLOC_MMAP_THRESHOLD_`` (the user's choice wins).
    """
    global _MMAP_USERS
    libc = glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        yield False
        return
    with _MMAP_LOCK:
        if _MMAP_USERS == 0:
            libc.mallopt(M_MMAP_THRESHOLD, int(threshold))
        _MMAP_USERS += 1
    try:
        yield True
    finally:
        with _MMAP_LOCK:
            _MMAP_USERS -= 1
            if _MMAP_USERS == 0:
                libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
