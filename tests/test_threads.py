"""Thread and allocator settings of the CLI."""

import os
import platform

import pytest
import torch

from infra_pl import threads as threads_module
from infra_pl.threads import (
    FIXED_DEFAULT_THREADS,
    busy_warning,
    choose_threads,
    configure_for_subcommand,
    limit_malloc_arenas,
)


@pytest.fixture()
def machine(monkeypatch):
    """A machine with ``cores`` cores and a settable 1-minute load; no thread variables set."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("INFRA_PL_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "limit_malloc_arenas", lambda *a, **k: False)
    state = {"cores": 4, "load": 0.0}
    monkeypatch.setattr(os, "cpu_count", lambda: state["cores"])
    monkeypatch.setattr(os, "getloadavg", lambda: (state["load"], state["load"], state["load"]))
    yield state
    torch.set_num_threads(1)  # conftest's setting for the other tests


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


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_fit_and_validate_threads_do_not_depend_on_load(machine, subcommand):
    # Issue 23: the weights depend on the thread count, so the same command must pick the same
    # count on an idle and on a busy machine (and on a 2- and a 64-core one).
    chosen = set()
    for cores, load in ((4, 0.0), (4, 3.5), (4, 12.0), (2, 0.0), (2, 5.0), (64, 0.0)):
        machine.update(cores=cores, load=load)
        threads, lines = configure_for_subcommand(subcommand)
        chosen.add(threads)
        assert torch.get_num_threads() == threads
        assert "not on machine load" in lines[0]
    assert chosen == {FIXED_DEFAULT_THREADS}


def test_attribute_follows_the_free_cores(machine):
    expected = {0.0: 4, 1.2: 3, 3.0: 1, 9.0: 1}  # at least one thread on an oversubscribed machine
    for load, threads in expected.items():
        machine["load"] = load
        assert choose_threads(by_load=True) == threads
        assert configure_for_subcommand("attribute")[0] == threads


def test_an_explicit_count_wins_for_every_subcommand(machine, monkeypatch):
    machine["load"] = 3.0
    for subcommand in ("fit", "validate", "attribute"):
        assert configure_for_subcommand(subcommand, 3)[0] == 3
    monkeypatch.setenv("INFRA_PL_THREADS", "2")
    assert configure_for_subcommand("fit")[0] == configure_for_subcommand("attribute")[0] == 2


def test_more_threads_than_free_cores_warn_that_only_speed_suffers(machine):
    machine.update(cores=2, load=1.6)  # 0.4 free cores
    warning = busy_warning(2)
    assert warning is not None and warning.startswith("2 threads on a busy machine run slower")
    assert warning.endswith("results do not depend on load, only on the thread count")
    threads, lines = configure_for_subcommand("fit", 2)
    assert threads == 2 and lines[-1] == f"[infra-pl] warning: {warning}"
    assert busy_warning(1) is None  # one thread never waits for a second core
    machine["load"] = 0.2
    assert busy_warning(2) is None and len(configure_for_subcommand("fit", 2)[1]) == 1
