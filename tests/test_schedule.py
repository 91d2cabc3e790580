import pytest

from infra_pl.schedule import ProgressClock, warmup_cosine


def test_warmup_then_cosine_to_floor():
    assert warmup_cosine(0.0, 0.1, 0.05) == pytest.approx(1e-3)
    assert warmup_cosine(0.05, 0.1, 0.05) == pytest.approx(0.5)
    assert warmup_cosine(0.1, 0.1, 0.05) == pytest.approx(1.0)
    assert warmup_cosine(1.0, 0.1, 0.05) == pytest.approx(0.05)
    assert warmup_cosine(2.0, 0.1, 0.05) == pytest.approx(0.05)
    values = [warmup_cosine(p / 100, 0.1, 0.05) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_clock_takes_the_larger_of_step_and_time_progress():
    now = [0.0]
    clock = ProgressClock(total_steps=1000, time_budget_s=10.0, clock=lambda: now[0])
    clock.start()
    assert clock.progress(100) == pytest.approx(0.1)
    now[0] = 5.0
    assert clock.progress(100) == pytest.approx(0.5)  # slow machine: time decides, the LR still anneals
    assert clock.progress(900) == pytest.approx(0.9)
