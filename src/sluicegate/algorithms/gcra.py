"""GCRA, the Generic Cell Rate Algorithm: a token bucket stored as one number.

Burst convention (pinned by ``tests/test_gcra_tables.py``):

* ``burst`` is the bucket *capacity* in cost units: from an idle (full) bucket exactly ``burst``
  units are admitted at once, and then one unit every ``interval = period / count`` seconds.
* ``rate = 600/min`` with no explicit burst means capacity 600: the classic "600 per minute"
  token bucket that refills continuously (OpenAI's own limits behave this way).
* The state is the *theoretical arrival time* ``tat``: the instant at which the bucket will be
  full again. A bucket is full whenever ``tat <= now``, so a missing key is simply ``tat = 0``.

A call of cost ``c`` is admitted when ``max(tat, now) + c * interval - now <= burst * interval``.
Admission may also be *deferred*: with ``max_delay > 0`` a call that would overflow by at most
``max_delay`` seconds is admitted with ``delay`` set, and its slot is reserved (``tat`` moves), so
the caller waits ``delay`` and then proceeds: a precise, atomic queue without a queue.

Floating point: times are float seconds. ``EPSILON`` absorbs the rounding of ``now + k*T - now``
(at most a few ulps; Redis-side times are shifted by an epoch offset to keep magnitudes ~1e8,
where one ulp is ~15 ns). It can over-admit by at most ``EPSILON`` seconds of refill, i.e. never
a whole request, and for a 30M tokens/min limit 0.05 of one token.
"""

from __future__ import annotations

import math
from typing import NamedTuple

#: Tolerance, in seconds, for float comparisons of arrival times (see module docstring).
EPSILON = 1e-7


class GcraResult(NamedTuple):
    """Outcome of one GCRA step.

    ``tat`` is the new state (unchanged when refused or when cost is 0); ``delay`` is how long
    an admitted call must wait before it proceeds (0 unless ``max_delay`` allowed a deferral);
    ``retry_after`` is, for a refused call, the seconds until the same call would be admitted
    without delay (``math.inf`` when the cost can never fit); ``remaining`` counts whole units
    still available right now; ``reset`` is the seconds until the bucket is full again.
    """

    allowed: bool
    tat: float
    delay: float
    retry_after: float
    remaining: int
    reset: float


def gcra_remaining(tat: float, now: float, interval: float, burst: float) -> tuple[int, float]:
    """Whole units available now and seconds until full, for a bucket in state ``tat``."""
    used = tat - now if tat > now else 0.0
    left = (burst * interval - used + EPSILON) / interval
    remaining = math.floor(left) if left > 0.0 else 0
    return remaining, used


#: ``(allowed, tat, delay, retry_after, remaining, reset)``: :class:`GcraResult` as a plain tuple.
GcraStep = tuple[bool, float, float, float, int, float]


def gcra_step(
    tat: float,
    now: float,
    cost: float,
    interval: float,
    burst: float,
    max_delay: float = 0.0,
) -> GcraStep:
    """Check ``cost`` units against the bucket and consume them if admitted.

    The one implementation of the GCRA arithmetic. It returns a plain tuple (fields as in
    :class:`GcraResult`) because stores call it in their hot loop; use :func:`gcra` for the
    named result. A cost above ``burst`` is refused outright with ``retry_after = inf``: waiting
    never helps, and admitting it would let one call drain more than the bucket can ever hold.
    """
    cap = burst * interval
    if cost > burst:
        used = tat - now if tat > now else 0.0
        left = (cap - used + EPSILON) / interval
        return (False, tat, 0.0, math.inf, math.floor(left) if left > 0.0 else 0, used)
    base = tat if tat > now else now
    new_tat = base + cost * interval
    excess = new_tat - now - cap
    if excess <= max_delay + EPSILON:
        state = new_tat if cost > 0 else tat
        used = state - now if state > now else 0.0
        left = (cap - used + EPSILON) / interval
        return (
            True,
            state,
            excess if excess > EPSILON else 0.0,
            0.0,
            math.floor(left) if left > 0.0 else 0,
            used,
        )
    used = tat - now if tat > now else 0.0
    left = (cap - used + EPSILON) / interval
    return (False, tat, 0.0, excess, math.floor(left) if left > 0.0 else 0, used)


def gcra(
    tat: float,
    now: float,
    cost: float,
    interval: float,
    burst: float,
    max_delay: float = 0.0,
) -> GcraResult:
    """:func:`gcra_step` with a named result."""
    return GcraResult(*gcra_step(tat, now, cost, interval, burst, max_delay))


def gcra_adjust(tat: float, now: float, delta: float, interval: float) -> float:
    """Debit (``delta > 0``) or refund (``delta < 0``) units after the fact; returns new ``tat``.

    A debit always lands, even past capacity: the upstream already spent those tokens, so the
    bucket goes into debt and later calls wait for it. A refund never fills a bucket above full
    (``tat`` is clamped at ``now``).
    """
    if delta >= 0:
        return (tat if tat > now else now) + delta * interval
    new_tat = tat + delta * interval
    return new_tat if new_tat > now else now
