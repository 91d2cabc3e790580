"""release_free_heap hands freed heap pages back to the OS (glibc) and never touches live data."""

from __future__ import annotations

import sys

import pytest
import torch

from infra_pl.allocator import glibc, release_free_heap


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux") or glibc() is None, reason="glibc malloc_trim only")
def test_freed_heap_pages_return_to_the_os_and_live_tensors_survive() -> None:
    # 64 KiB buffers stay below glibc's mmap threshold, so they live in the heap; keeping the last
    # one alive pins the heap top, so only an interior release (what malloc_trim(0) adds to plain
    # top trimming) can give the freed 40 MB back.
    buffers = [torch.full((16384,), float(i)) for i in range(640)]
    keep = buffers[-1]
    del buffers
    before = _rss_mb()
    assert release_free_heap() is True
    after = _rss_mb()
    assert before - after > 20, f"RSS {before:.1f} -> {after:.1f} MB"
    assert torch.equal(keep, torch.full((16384,), 639.0))


def test_release_is_harmless_when_nothing_is_free() -> None:
    x = torch.arange(10.0)
    release_free_heap()
    release_free_heap()
    assert torch.equal(x, torch.arange(10.0))
