"""GCRA pinned against hand-computed tables (see the burst convention in algorithms/gcra.py)."""

from __future__ import annotations

import math

import pytest

from sluicegate.algorithms import gcra, gcra_adjust


def run(schedule: list[tuple[float, float]], interval: float, burst: float) -> list[tuple]:
    """Apply (now, cost) steps to one bucket; return (allowed, retry_after, remaining, reset)."""
    tat = 0.0
    out = []
    for now, cost in schedule:
        r = gcra(tat, now, cost, interval, burst)
        tat = r.tat
        out.append((r.allowed, round(r.retry_after, 9), r.remaining, round(r.reset, 9)))
    return out


def test_burst_then_steady_rate() -> None:
    # 10/s (interval 0.1 s), burst 3, starting at t=100 from an idle bucket.
    got = run([(100.0, 1)] * 4 + [(100.05, 1), (100.1, 1), (100.1, 1), (100.3, 1)], 0.1, 3)
    assert got == [
        (True, 0.0, 2, 0.1),
        (True, 0.0, 1, 0.2),
        (True, 0.0, 0, 0.3),
        (False, 0.1, 0, 0.3),  # full: next unit frees in exactly one interval
        (False, 0.05, 0, 0.25),
        (True, 0.0, 0, 0.3),  # one unit refilled at t=100.1, taken
        (False, 0.1, 0, 0.3),
        (True, 0.0, 1, 0.2),  # two units refilled by t=100.3, one taken
    ]


def test_default_burst_equals_count_per_period() -> None:
    # 30/min with no explicit burst: capacity 30, interval 2 s.
    got = run([(0.0, 1)] * 31, 2.0, 30)
    assert [a for a, *_ in got] == [True] * 30 + [False]
    assert got[-1][1] == 2.0  # retry after exactly one interval


def test_cost_larger_than_burst_is_refused_not_admitted() -> None:
    r = gcra(0.0, 10.0, 11, 0.1, 10)
    assert not r.allowed and math.isinf(r.retry_after) and r.tat == 0.0
    assert r.remaining == 10


def test_cost_equal_to_burst_is_admitted_from_idle() -> None:
    r = gcra(0.0, 10.0, 10, 0.1, 10)
    assert r.allowed and r.remaining == 0 and r.reset == pytest.approx(1.0)


def test_weighted_cost_retry_after_is_exact() -> None:
    # Tokens: 1000/s, burst 5000. Take 4000, then ask for 3000: needs 2000 more units = 2 s.
    r1 = gcra(0.0, 0.0, 4000, 0.001, 5000)
    r2 = gcra(r1.tat, 0.0, 3000, 0.001, 5000)
    assert r1.allowed and not r2.allowed
    assert r2.retry_after == pytest.approx(2.0)
    r3 = gcra(r1.tat, 2.0, 3000, 0.001, 5000)
    assert r3.allowed


def test_zero_cost_check_consumes_nothing() -> None:
    r1 = gcra(0.0, 5.0, 2, 1.0, 3)
    r2 = gcra(r1.tat, 5.0, 0, 1.0, 3)
    assert r2.allowed and r2.tat == r1.tat and r2.remaining == 1
    idle = gcra(0.0, 5.0, 0, 1.0, 3)
    assert idle.allowed and idle.tat == 0.0 and idle.remaining == 3


def test_deferred_admission_reserves_the_slot() -> None:
    # 1/s, burst 2: two at once, the third may wait up to 1.5 s: admitted with delay 1 s.
    tat = 0.0
    for _ in range(2):
        tat = gcra(tat, 0.0, 1, 1.0, 2).tat
    r = gcra(tat, 0.0, 1, 1.0, 2, max_delay=1.5)
    assert r.allowed and r.delay == pytest.approx(1.0) and r.tat == pytest.approx(3.0)
    # A fourth would need 2 s: beyond max_delay, refused, retry after the full 2 s.
    r4 = gcra(r.tat, 0.0, 1, 1.0, 2, max_delay=1.5)
    assert not r4.allowed and r4.retry_after == pytest.approx(2.0)


def test_adjust_refund_never_overfills_and_debit_goes_into_debt() -> None:
    tat = gcra(0.0, 0.0, 3, 1.0, 5).tat  # 3 used
    assert gcra_adjust(tat, 0.0, -2, 1.0) == pytest.approx(1.0)
    assert gcra_adjust(tat, 0.0, -10, 1.0) == 0.0  # clamped at now: full, not more than full
    debt = gcra_adjust(tat, 0.0, 4, 1.0)  # 7 used of 5: two units of debt
    assert debt == pytest.approx(7.0)
    assert not gcra(debt, 0.0, 1, 1.0, 5).allowed
    assert gcra(debt, 3.0, 1, 1.0, 5).allowed
