"""The ``Store`` protocol and the value types that cross it.

A store persists bucket state and applies the pure algorithms of :mod:`sluicegate.algorithms` to
*all buckets of one decision at once*: it checks every bucket first and writes only if all pass,
so a refusal at the session plane leaves the tenant and agent buckets untouched. The request is a
flat, serialisable :class:`Batch`, so a Redis store can ship it to one Lua script in one round
trip; token reservations for later settlement travel in the same batch and are written in the
same atomic step.

Besides buckets, every store keeps a few *shared values*: plain strings under a key, each with a
time to live (``put_value`` / ``get_value`` / ``list_values``). They hold control-plane state
that every replica must agree on while it lasts (an admin's scale event, say), which is why they
live in the store every replica shares and not in each process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import IntEnum, StrEnum
from typing import NamedTuple, Protocol, runtime_checkable


class Algorithm(StrEnum):
    """Rate-limiting algorithm of one bucket. GCRA is the default everywhere."""

    GCRA = "gcra"
    SLIDING_WINDOW = "sliding_window"
    FIXED_WINDOW = "fixed_window"
    CONCURRENCY = "concurrency"


class Limit(NamedTuple):
    """Resolved parameters of one bucket, shared by every decision that uses that limit.

    For GCRA ``period`` is the emission interval (seconds per unit) and ``capacity`` the burst.
    For the window algorithms ``period`` is the window length and ``capacity`` the limit.
    For concurrency ``period`` is the lease time-to-live and ``capacity`` the in-flight limit.
    """

    algorithm: Algorithm
    period: float
    capacity: float


class BucketOp(NamedTuple):
    """Consume ``cost`` units of ``limit`` in the bucket stored under ``key``."""

    key: str
    limit: Limit
    cost: float


class Reservation(NamedTuple):
    """Written with the batch when it is admitted, so ``settle`` can reconcile later.

    ``token_ops`` are indexes into the batch of the buckets whose cost was a token estimate;
    ``concurrency_ops`` those holding an in-flight slot to release. ``ttl`` bounds how long the
    record is kept (a reservation never settled simply stands as charged).
    """

    id: str
    reserved: float
    token_ops: tuple[int, ...]
    concurrency_ops: tuple[int, ...]
    ttl: float


class Batch(NamedTuple):
    """Everything one decision asks of the store, column by column (the engine builds these
    for every call, so they avoid per-bucket objects): bucket ``i`` is ``keys[i]`` with
    ``limits[i]`` and consumes ``costs[i]``."""

    keys: Sequence[str]
    limits: Sequence[Limit]
    costs: Sequence[float]
    max_delay: float = 0.0
    reservation: Reservation | None = None

    @classmethod
    def of(
        cls,
        ops: Iterable[BucketOp],
        max_delay: float = 0.0,
        reservation: Reservation | None = None,
    ) -> Batch:
        """Build a batch from per-bucket ops (tests and hand-written callers)."""
        ops = tuple(ops)
        return cls(
            tuple(o.key for o in ops),
            tuple(o.limit for o in ops),
            tuple(o.cost for o in ops),
            max_delay,
            reservation,
        )

    @property
    def ops(self) -> tuple[BucketOp, ...]:
        return tuple(map(BucketOp, self.keys, self.limits, self.costs))


class BucketResult(NamedTuple):
    """Per-bucket outcome. ``retry_after`` is 0 when this bucket admitted, ``inf`` if never.

    For a refused batch, a bucket that would have admitted reports its state as if it had
    consumed (so the caller sees what the call would have left), though nothing was written."""

    allowed: bool
    remaining: int
    reset: float
    retry_after: float


class BatchResult(NamedTuple):
    """Outcome of a batch: admitted as a whole (after ``delay`` seconds) or not at all.
    Per-bucket values are columns aligned with the batch's ``keys``."""

    allowed: bool
    delay: float
    remaining: Sequence[int]
    reset: Sequence[float]
    retry_after: Sequence[float]

    @property
    def buckets(self) -> tuple[BucketResult, ...]:
        return tuple(
            BucketResult(r <= 0.0, n, t, r)
            for n, t, r in zip(self.remaining, self.reset, self.retry_after, strict=True)
        )


class SettleStatus(IntEnum):
    """What ``settle`` did."""

    APPLIED = 0
    DUPLICATE = 1
    UNKNOWN = 2


class SettleResult(NamedTuple):
    status: SettleStatus
    delta: float


@runtime_checkable
class Store(Protocol):
    """Bucket state behind an atomic check-and-consume.

    ``now`` is the caller's clock reading. Stores with an authoritative clock of their own (Redis
    ``TIME``) may ignore it: what matters is that every replica sharing a bucket uses one clock.
    """

    async def apply(self, batch: Batch, now: float) -> BatchResult:
        """Check every op; if all pass, consume all of them (and write the reservation)."""
        ...

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        """Charge ``actual - reserved`` to the reservation's token buckets and release its
        concurrency slots; idempotent per reservation id; refunds never overfill a bucket."""
        ...

    # Shared values: control-plane state (e.g. scale events) that every replica must see until
    # it expires. They live here, not in each process, because the store is the one thing all
    # replicas share; a TTL on every value keeps the store's memory bounded without a cleaner.
    # Keys follow the bucket key scheme (``sg:{acme}:scale:planner``: on Redis Cluster the hash
    # tag keeps a tenant's values in its slot) but must not collide with bucket keys: on Redis
    # both share one keyspace. Values are opaque strings (callers store JSON).

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        """Set ``key`` to ``value``, expiring ``ttl`` seconds later (``ttl > 0``, finite; a
        ``ValueError`` otherwise). Overwrites any earlier value and its expiry: last write wins.
        ``now`` is the caller's clock: the *same* clock it passes to :meth:`apply` (the memory
        store expires values and sweeps idle buckets by it, so a wall-clock ``now`` next to a
        monotonic one would evict live buckets); stores with a clock of their own (Redis) may
        ignore it."""
        ...

    async def get_value(self, key: str, now: float) -> str | None:
        """The live value of ``key``, or ``None`` (never set, or expired): a point read, cheap
        enough for the decision path."""
        ...

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        """Every live key starting with ``prefix`` (matched literally), with its value, in key
        order. For admin listings: it may be slow (Redis scans the keyspace with ``SCAN``) and
        is not a snapshot (a value written or expiring during the scan may or may not appear)."""
        ...

    async def aclose(self) -> None:
        """Release connections and background tasks."""
        ...


def check_value(value: str, ttl: float) -> None:
    """Validate ``put_value`` arguments the same way in every store: a ``str`` value (TypeError
    otherwise) and a finite ``ttl > 0`` in seconds (ValueError otherwise)."""
    if not isinstance(value, str):
        raise TypeError(f"a store value must be a str, got {type(value).__name__}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"a store value's ttl must be a finite number of seconds > 0, got {ttl!r}")
