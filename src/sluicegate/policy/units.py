"""Parsing of the human units used in policy files: rates, durations, counts.

``600/min``, ``2M/min``, ``100k/h``, ``5/s``, ``1.5k/10s``; durations ``800ms``, ``2s``, ``5m``,
``1h`` (a bare number is seconds); counts ``120``, ``2M``, ``100k``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}
_PERIOD = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr|d|day)?\s*$")

RATE_HELP = "expected a rate like '600/min', '2M/min', '100k/h', '5/s' or '10/30s'"
DURATION_HELP = "expected a duration like '800ms', '2s', '5m' or '1h'"


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` units per ``period`` seconds."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        return f"{format_count(self.count)}/{format_period(self.period)}"


def parse_count(value: object) -> float:
    """``120`` / ``"2M"`` / ``"100k"`` -> float. Raises ``ValueError`` with a readable message."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        m = _COUNT_RE.match(value)
        if not m:
            raise ValueError(f"invalid count {value!r}: expected a number like 120, '100k' or '2M'")
        number = float(m.group(1)) * _SUFFIX[m.group(2)]
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def parse_rate(value: object) -> Rate:
    """``"600/min"`` -> ``Rate(600, 60)``."""
    if isinstance(value, Rate):
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid rate {value!r}: {RATE_HELP}")
    m = _RATE_RE.match(value)
    if not m:
        raise ValueError(f"invalid rate {value!r}: {RATE_HELP}")
    count = float(m.group(1)) * _SUFFIX[m.group(2)]
    unit = m.group(4)
    if unit not in _PERIOD and unit.endswith("s") and unit[:-1] in _PERIOD:
        unit = unit[:-1]  # plurals: "mins", "hours"
    if unit not in _PERIOD:
        raise ValueError(f"invalid rate {value!r}: unknown time unit {unit!r} (use s, min, h or d)")
    multiple = float(m.group(3)) if m.group(3) else 1.0
    period = multiple * _PERIOD[unit]
    if count <= 0:
        raise ValueError(f"invalid rate {value!r}: the count must be greater than 0")
    if period <= 0:
        raise ValueError(f"invalid rate {value!r}: the period must be greater than 0")
    return Rate(count, period)


def parse_duration(value: object) -> float:
    """``"800ms"`` -> 0.8; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: {DURATION_HELP}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"invalid duration {value!r}: {DURATION_HELP}")
        seconds = float(m.group(1)) * _PERIOD[m.group(2) or "s"]
    else:
        raise ValueError(f"invalid duration {value!r}: {DURATION_HELP}")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative time")
    return seconds


def format_count(count: float) -> str:
    """2_000_000 -> '2M', 1500 -> '1.5k', 30 -> '30'."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale and (count / scale) * 10 == int((count / scale) * 10):
            return f"{count / scale:g}{suffix}"
    return f"{count:g}"


def format_period(period: float) -> str:
    for name, seconds in (("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if period == seconds:
            return name
    for name, seconds in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if period % seconds == 0:
            return f"{period / seconds:g}{name}"
    return f"{period:g}s"
