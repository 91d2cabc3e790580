"""Thread and allocator settings of the CLI."""

import os
import platform

import pytest
import torch

from infra_pl.threads import choose_threads, limit_malloc_arenas


def test_requested_threads_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(2) == 2
    assert choose_threads(None) == 3
    assert choose_threads(0) == 1  # never fewer than one


@pytest.mark.skipif(platform.system() != "Linux" or "MALLOC_ARENA_MAX" in os.environ, reason="glibc mallopt only")
def test_malloc_arena_cap_applies_on_glibc_and_allocation_still_works():
    assert limit_malloc_arenas(1) is True
    x = torch.ones(1024, 1024)  # allocations keep working after the cap
    assert float(x.sum()) == 1024 * 1024


def test_malloc_arena_cap_defers_to_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(1) is False
