"""Injected time. Logic never reads the wall clock directly; it asks a ``Clock``.

That makes the simulator and property tests exact and cheap: a ``VirtualClock`` moves only when
told to.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of time in float seconds. Only differences between readings are meaningful."""

    def now(self) -> float: ...


class MonotonicClock:
    """Real time from ``time.monotonic`` (immune to wall-clock jumps)."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """A clock that only moves when ``advance`` or ``set`` is called."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a virtual clock cannot go backwards")
        self._now += seconds

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("a virtual clock cannot go backwards")
        self._now = now
