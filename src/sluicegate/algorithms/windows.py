"""Window counters: a sliding-window estimate and the fixed window.

The fixed window exists so that old configurations load and so that the linter can flag it: it
admits up to twice its limit across a window boundary, which bursty agent traffic finds at once.
The sliding-window counter (Cloudflare's two-window estimate) weights the previous window by the
share of it still inside the sliding interval.

State is ``(window_index, previous_count, current_count)``; fixed windows ignore the previous
count. Window index ``i`` covers ``[i * window, (i + 1) * window)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: Tolerance in cost units for float comparisons of weighted counts.
COUNT_EPSILON = 1e-9


class WindowResult(NamedTuple):
    """Outcome of one window step; fields as in :class:`~sluicegate.algorithms.GcraResult`."""

    allowed: bool
    state: tuple[int, float, float]
    retry_after: float
    remaining: int
    reset: float


def _roll(state: tuple[int, float, float], index: int) -> tuple[float, float]:
    """Previous and current counts as seen from window ``index``."""
    old_index, prev, curr = state
    if index == old_index:
        return prev, curr
    if index == old_index + 1:
        return curr, 0.0
    return 0.0, 0.0


def fixed_window(
    state: tuple[int, float, float], now: float, cost: float, limit: float, window: float
) -> WindowResult:
    """Count ``cost`` against a window aligned on multiples of ``window`` seconds."""
    index = math.floor(now / window)
    _, curr = _roll(state, index)
    reset = (index + 1) * window - now
    if cost > limit:
        return WindowResult(False, state, math.inf, max(0, math.floor(limit - curr)), reset)
    if curr + cost <= limit + COUNT_EPSILON:
        new_curr = curr + cost
        new_state = (index, 0.0, new_curr) if cost > 0 else state
        return WindowResult(True, new_state, 0.0, max(0, math.floor(limit - new_curr)), reset)
    return WindowResult(False, state, reset, max(0, math.floor(limit - curr)), reset)


def sliding_window(
    state: tuple[int, float, float], now: float, cost: float, limit: float, window: float
) -> WindowResult:
    """Admit when ``prev * (1 - elapsed/window) + curr + cost <= limit``.

    Costs may be negative (deposits): they are always admitted and lower the count, which is
    how the retry budget keeps ``retries - deposits`` in one counter."""
    index = math.floor(now / window)
    prev, curr = _roll(state, index)
    start = index * window
    weight = 1.0 - (now - start) / window
    estimate = prev * weight + curr
    # Time until the estimate has decayed to nothing: the current window must slide out fully.
    reset = (start + 2 * window - now) if curr > 0 else (start + window - now if prev > 0 else 0.0)
    if cost > limit:
        return WindowResult(False, state, math.inf, max(0, math.floor(limit - estimate)), reset)
    if cost < 0 or estimate + cost <= limit + COUNT_EPSILON:
        # A negative cost is a deposit (the retry budget: policy/resolve.py): it always lands.
        new_state = (index, prev, curr + cost) if cost != 0 else state
        left = limit - estimate - cost
        return WindowResult(True, new_state, 0.0, max(0, math.floor(left + COUNT_EPSILON)), reset)
    return WindowResult(
        False,
        state,
        _sliding_retry(prev, curr, now, start, cost, limit, window),
        max(0, math.floor(limit - estimate + COUNT_EPSILON)),
        reset,
    )


def _sliding_retry(
    prev: float, curr: float, now: float, start: float, cost: float, limit: float, window: float
) -> float:
    """Seconds until ``cost`` fits, solving the linear decay of the weighted previous count."""
    if curr + cost <= limit and prev > 0:
        # Inside this window: need prev * w <= limit - curr - cost, w = 1 - (t - start)/window.
        w_needed = (limit - curr - cost) / prev
        return start + window * (1.0 - w_needed) - now
    # Next window: previous becomes curr and decays from weight 1.
    next_start = start + window
    if curr <= 0:
        return next_start - now
    w_needed = (limit - cost) / curr
    return next_start + window * (1.0 - min(1.0, w_needed)) - now
