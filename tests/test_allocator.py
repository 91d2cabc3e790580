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


MAPPING_PROBE = """
import ctypes, torch
from infra_pl.allocator import glibc, mmap_large_buffers, release_free_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = glibc()
libc.mallinfo2.restype = MallInfo2
mapped = lambda: int(libc.mallinfo2().hblkhd)
size = 8 * 2**20 // 4  # 8 MiB of float32: above the block's threshold, below glibc's 32 MiB ceiling
libc.mallopt(-3, 32 * 2**20)  # as glibc's dynamic threshold is after a while (a fresh one starts at 128 KiB)
with mmap_large_buffers() as applied:
    with mmap_large_buffers() as nested:
        pass
    release_free_heap()  # glibc maps only what no free heap chunk can serve
    before = mapped(); inside = torch.ones(size); grew_inside = mapped() - before
    del inside
release_free_heap()
before = mapped(); outside = torch.ones(size); grew_outside = mapped() - before
print(applied, nested, grew_inside, grew_outside)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or glibc() is None or not hasattr(glibc(), "mallinfo2"),
    reason="glibc >= 2.33 (mallinfo2) only",
)
def test_large_buffers_are_mapped_only_inside_the_block() -> None:
    """In a fresh process (a test run's heap may hold free chunks that serve any size)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", MAPPING_PROBE], env=env, capture_output=True, text=True, check=True)
    applied, nested, grew_inside, grew_outside = out.stdout.split()
    assert applied == nested == "True"  # nested use keeps the setting
    assert int(grew_inside) >= 8 * 2**20  # its own mapping
    assert int(grew_outside) < 8 * 2**20  # on the heap again once the block is left


def test_mmap_setting_defers_to_the_environment(monkeypatch) -> None:
    from infra_pl.allocator import mmap_large_buffers

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    with mmap_large_buffers() as applied:
        assert applied is False
