"""Pure rate-limiting arithmetic: no clock reads, no I/O, no globals.

Every function here is ``(state, now, cost, params) -> (allowed, new_state, info)``. Stores only
persist the state and apply these functions atomically; the Redis Lua script mirrors them
operation for operation (a cross-check test runs both on identical inputs).

Time is a float number of seconds on whatever clock the caller uses (a virtual clock in the
simulator, Redis ``TIME`` in the Redis store).
"""

from sluicegate.algorithms.concurrency import concurrency_acquire, concurrency_release
from sluicegate.algorithms.gcra import (
    GcraResult,
    GcraStep,
    gcra,
    gcra_adjust,
    gcra_remaining,
    gcra_step,
)
from sluicegate.algorithms.windows import (
    WindowResult,
    fixed_window,
    sliding_window,
)

__all__ = [
    "GcraResult",
    "GcraStep",
    "WindowResult",
    "concurrency_acquire",
    "concurrency_release",
    "fixed_window",
    "gcra",
    "gcra_adjust",
    "gcra_remaining",
    "gcra_step",
    "sliding_window",
]
