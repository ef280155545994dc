"""Window counters and the concurrency limit, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from sluicegate.algorithms import (
    concurrency_acquire,
    concurrency_release,
    fixed_window,
    sliding_window,
)

EMPTY = (-(2**62), 0.0, 0.0)


def test_fixed_window_admits_double_across_a_boundary() -> None:
    """The flaw the linter warns about: 2x the limit within a short interval."""
    state = EMPTY
    admitted = 0
    for now in [59.0] * 10 + [60.0] * 10:
        r = fixed_window(state, now, 1, 10, 60.0)
        state = r.state
        admitted += r.allowed
    assert admitted == 20


def test_fixed_window_retry_is_window_end() -> None:
    state = EMPTY
    for _ in range(3):
        state = fixed_window(state, 10.0, 1, 3, 60.0).state
    r = fixed_window(state, 10.0, 1, 3, 60.0)
    assert not r.allowed and r.retry_after == 50.0 and r.remaining == 0


def test_sliding_window_weights_previous_window() -> None:
    state = EMPTY
    for _ in range(10):
        state = sliding_window(state, 59.0, 1, 10, 60.0).state
    # At t=90 the previous window (10 calls) weighs 0.5: 5 estimated, 5 more fit.
    admitted = 0
    for _ in range(8):
        r = sliding_window(state, 90.0, 1, 10, 60.0)
        state = r.state
        admitted += r.allowed
    assert admitted == 5


def test_sliding_window_retry_after_solves_the_decay() -> None:
    state = EMPTY
    for _ in range(10):
        state = sliding_window(state, 59.0, 1, 10, 60.0).state
    for _ in range(5):
        state = sliding_window(state, 90.0, 1, 10, 60.0).state
    r = sliding_window(state, 90.0, 1, 10, 60.0)
    # Need 10*w + 5 + 1 <= 10 -> w <= 0.4 -> t >= 60 + 36 = 96: retry after 6 s.
    assert not r.allowed and r.retry_after == pytest.approx(6.0)
    assert sliding_window(state, 96.0 + 1e-9, 1, 10, 60.0).allowed


def test_window_cost_above_limit_never_fits() -> None:
    assert math.isinf(sliding_window(EMPTY, 0.0, 11, 10, 1.0).retry_after)
    assert math.isinf(fixed_window(EMPTY, 0.0, 11, 10, 1.0).retry_after)


def test_concurrency_acquire_release() -> None:
    n = 0.0
    for _ in range(3):
        ok, n, _ = concurrency_acquire(n, 1, 3)
        assert ok
    ok, n2, remaining = concurrency_acquire(n, 1, 3)
    assert not ok and n2 == 3 and remaining == 0
    n = concurrency_release(n, 1)
    assert concurrency_acquire(n, 1, 3)[0]
    assert concurrency_release(0.0, 1) == 0.0  # a double release cannot create capacity
