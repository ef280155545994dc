"""Concurrency (in-flight) limit: acquire on admission, release when the call completes.

State is the number of calls in flight. Stores attach a lease time-to-live to it so that a crashed
caller that never releases cannot hold a slot forever (see the stores' docs).
"""

from __future__ import annotations

import math


def concurrency_acquire(in_flight: float, cost: float, limit: float) -> tuple[bool, float, int]:
    """Returns ``(allowed, new_in_flight, remaining)``; a cost above ``limit`` never fits."""
    if cost <= limit and in_flight + cost <= limit:
        new = in_flight + cost
        return True, new, max(0, math.floor(limit - new))
    return False, in_flight, max(0, math.floor(limit - in_flight))


def concurrency_release(in_flight: float, cost: float) -> float:
    """Release ``cost`` slots; never below zero (a double release cannot create capacity)."""
    new = in_flight - cost
    return new if new > 0 else 0.0
