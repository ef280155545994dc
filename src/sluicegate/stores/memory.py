"""The embedded store: plain dicts on one event loop.

Atomicity comes from running to completion without an ``await`` between check and write, so it
holds for every coroutine on the loop (use one store per event loop; it is not thread-safe).

Memory stays bounded by the number of *active* buckets: a GCRA bucket whose ``tat`` has passed is
full, so its key carries no information and is dropped; window and concurrency buckets likewise
once their windows or leases lapse. Eviction is an incremental sweep (``sweep_batch`` keys per
decision once ``sweep_interval`` has elapsed), so no single decision pays for a full scan.

Shared values (``put_value`` and friends) are ``key -> (value, expires_at)`` on the caller's
clock. An expired value is dropped when it is read or listed, and by the same incremental sweep
(which ``put_value`` drives too, so a store that only holds values stays bounded as well).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from sluicegate.algorithms import (
    concurrency_acquire,
    concurrency_release,
    fixed_window,
    gcra_adjust,
    gcra_step,
    sliding_window,
)
from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    BucketOp,
    SettleResult,
    SettleStatus,
    check_value,
)

_GCRA = Algorithm.GCRA
_SLIDING = Algorithm.SLIDING_WINDOW
_FIXED = Algorithm.FIXED_WINDOW
_CONC = Algorithm.CONCURRENCY
_EMPTY_WINDOW: tuple[int, float, float] = (-(2**62), 0.0, 0.0)


# A reservation kept for ``settle``: ``(reserved, expires_at, token_keys, token_periods,
# token_is_gcra, concurrency_keys, concurrency_costs)``. Only atomic values, so the garbage
# collector untracks these tuples: millions of open reservations cost memory, not GC time.
# Once settled, the record is replaced by its bare ``expires_at`` (a float) for idempotency.
_Record = tuple[
    float, float, tuple[str, ...], tuple[float, ...], tuple[bool, ...], tuple[str, ...],
    tuple[float, ...],
]  # fmt: skip


def _expired(value: Any, now: float) -> bool:
    """Whether a stored bucket value carries no information any more."""
    if isinstance(value, float):  # GCRA tat
        return value <= now
    if isinstance(value, list):  # concurrency [in_flight, lease_expiry]
        return bool(value[0] <= 0 or value[1] <= now)
    index, _prev, _curr, window = value  # windows: (index, prev, curr, window)
    return bool((index + 2) * window <= now)


class MemoryStore:
    """In-process bucket state; the embedded default."""

    def __init__(self, *, sweep_interval: float = 1.0, sweep_batch: int = 64) -> None:
        self._buckets: dict[str, Any] = {}
        self._records: dict[str, _Record | float] = {}
        self._sweep_interval = sweep_interval
        self._sweep_batch = sweep_batch
        self._next_sweep = -math.inf
        self._sweep_iter: Iterator[tuple[str, Any]] | None = None
        self._records_iter: Iterator[tuple[str, _Record | float]] | None = None
        self._values: dict[str, tuple[str, float]] = {}  # key -> (value, expires_at)
        self._values_iter: Iterator[tuple[str, tuple[str, float]]] | None = None

    # -- introspection (tests, benchmarks, admin status) ------------------------------------
    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def reservation_count(self) -> int:
        return len(self._records)

    @property
    def value_count(self) -> int:
        """Shared values held, expired ones not yet swept included."""
        return len(self._values)

    def peek(self, key: str) -> Any:
        """The raw stored state of ``key`` (``None`` when absent or evicted)."""
        return self._buckets.get(key)

    # -- Store protocol ---------------------------------------------------------------------
    async def apply(self, batch: Batch, now: float) -> BatchResult:
        return self.apply_sync(batch, now)

    def apply_sync(self, batch: Batch, now: float) -> BatchResult:
        """Synchronous body of :meth:`apply` (the simulator calls it without an event loop)."""
        if now >= self._next_sweep:
            self._sweep(now)
        buckets = self._buckets
        get = buckets.get
        keys, limits, costs, max_delay, res = batch
        remaining: list[int] = []
        resets: list[float] = []
        retries: list[float] = []
        pending: list[tuple[str, Any]] = []
        allowed = True
        delay = 0.0
        for key, limit, cost in zip(keys, limits, costs, strict=True):
            algo = limit[0]
            if algo is _GCRA:
                tat = get(key, 0.0)
                ok, new_tat, wait, retry, left, reset = gcra_step(
                    tat, now, cost, limit[1], limit[2], max_delay
                )
                remaining.append(left)
                resets.append(reset)
                retries.append(retry)
                if ok:
                    if new_tat != tat:
                        pending.append((key, new_tat))
                    if wait > delay:
                        delay = wait
                else:
                    allowed = False
            elif algo is _CONC:
                held = get(key)
                in_flight = held[0] if held is not None and held[1] > now else 0.0
                ok, new, left = concurrency_acquire(in_flight, cost, limit.capacity)
                remaining.append(left)
                resets.append(0.0)
                retries.append(0.0 if ok else (math.inf if cost > limit.capacity else 1.0))
                if ok:
                    pending.append((key, [new, now + limit.period]))
                else:
                    allowed = False
            else:
                stored = get(key)
                state = stored[:3] if stored is not None else _EMPTY_WINDOW
                fn = sliding_window if algo is _SLIDING else fixed_window
                w = fn(state, now, cost, limit.capacity, limit.period)
                remaining.append(w.remaining)
                resets.append(w.reset)
                retries.append(0.0 if w.allowed else max(w.retry_after, 1e-6))
                if w.allowed:
                    if w.state != state:
                        pending.append((key, (*w.state, limit.period)))
                else:
                    allowed = False
        if not allowed:
            return BatchResult(False, 0.0, remaining, resets, retries)
        for key, value in pending:
            buckets[key] = value
        if res is not None:
            tok = res.token_ops
            conc = res.concurrency_ops
            self._records[res.id] = (
                res.reserved,
                now + res.ttl,
                tuple([keys[i] for i in tok]),
                tuple([limits[i][1] for i in tok]),
                tuple([limits[i][0] is _GCRA for i in tok]),
                tuple([keys[i] for i in conc]) if conc else (),
                tuple([costs[i] for i in conc]) if conc else (),
            )
        return BatchResult(True, delay, remaining, resets, retries)

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        return self.settle_sync(reservation_id, actual, now)

    def settle_sync(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        """Synchronous body of :meth:`settle`."""
        record = self._records.get(reservation_id)
        if record is None:
            return SettleResult(SettleStatus.UNKNOWN, 0.0)
        if isinstance(record, float):
            if record <= now:
                return SettleResult(SettleStatus.UNKNOWN, 0.0)
            return SettleResult(SettleStatus.DUPLICATE, 0.0)
        reserved, expires_at, tkeys, periods, is_gcra, ckeys, ccosts = record
        if expires_at <= now:
            return SettleResult(SettleStatus.UNKNOWN, 0.0)
        self._records[reservation_id] = expires_at
        delta = actual - reserved
        buckets = self._buckets
        if delta != 0:
            for key, period, gcra_bucket in zip(tkeys, periods, is_gcra, strict=True):
                if gcra_bucket:
                    new_tat = gcra_adjust(buckets.get(key, 0.0), now, delta, period)
                    if new_tat > now:
                        buckets[key] = new_tat
                    else:
                        buckets.pop(key, None)
                else:
                    self._adjust_window(key, period, delta, now)
        for key, cost in zip(ckeys, ccosts, strict=True):
            held = buckets.get(key)
            if held is not None:
                held[0] = concurrency_release(held[0], cost)
                if held[0] <= 0:
                    del buckets[key]
        return SettleResult(SettleStatus.APPLIED, delta)

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        self.put_value_sync(key, value, ttl, now)

    def put_value_sync(self, key: str, value: str, ttl: float, now: float) -> None:
        """Synchronous body of :meth:`put_value` (for callers without an event loop)."""
        check_value(value, ttl)
        if now >= self._next_sweep:
            self._sweep(now)
        self._values[key] = (value, now + ttl)

    async def get_value(self, key: str, now: float) -> str | None:
        return self.get_value_sync(key, now)

    def get_value_sync(self, key: str, now: float) -> str | None:
        """Synchronous body of :meth:`get_value`."""
        item = self._values.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._values[key]
            return None
        return item[0]

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        return self.list_values_sync(prefix, now)

    def list_values_sync(self, prefix: str, now: float) -> dict[str, str]:
        """Synchronous body of :meth:`list_values` (a full pass over the values)."""
        values = self._values
        live: list[tuple[str, str]] = []
        expired: list[str] = []
        for key, (value, expires_at) in values.items():
            if key.startswith(prefix):
                if expires_at <= now:
                    expired.append(key)
                else:
                    live.append((key, value))
        for key in expired:
            del values[key]
        return dict(sorted(live))

    async def aclose(self) -> None:
        self._buckets.clear()
        self._records.clear()
        self._values.clear()

    # -- internals ----------------------------------------------------------------------------
    def _adjust_window(self, key: str, window: float, delta: float, now: float) -> None:
        """Settle on a window counter: add to (or take from, never below 0) the current count."""
        stored = self._buckets.get(key)
        index = math.floor(now / window)
        if stored is None or stored[0] != index:
            if delta <= 0:
                return  # the window the reservation was counted in is gone; nothing to refund
            prev = stored[2] if stored is not None and stored[0] == index - 1 else 0.0
            self._buckets[key] = (index, prev, delta, window)
            return
        self._buckets[key] = (index, stored[1], max(0.0, stored[2] + delta), window)

    def _sweep(self, now: float) -> None:
        """Drop up to ``sweep_batch`` idle buckets, expired reservations and expired values.

        Works through a snapshot of the items; a key is dropped only if it still holds the
        snapshotted value (an update in between made it live again)."""
        budget = self._sweep_batch
        buckets = self._buckets
        if self._sweep_iter is None:
            self._sweep_iter = iter(list(buckets.items()))
        for key, value in self._sweep_iter:
            if _expired(value, now) and buckets.get(key) is value:
                del buckets[key]
            budget -= 1
            if budget <= 0:
                return
        records = self._records
        if self._records_iter is None:
            self._records_iter = iter(list(records.items()))
        for rid, record in self._records_iter:
            expires_at = record if isinstance(record, float) else record[1]
            if expires_at <= now and records.get(rid) is record:
                del records[rid]
            budget -= 1
            if budget <= 0:
                return
        values = self._values
        if self._values_iter is None:
            self._values_iter = iter(list(values.items()))
        for key, item in self._values_iter:
            if item[1] <= now and values.get(key) is item:
                del values[key]
            budget -= 1
            if budget <= 0:
                return
        # A full pass is complete: rest until the next interval.
        self._sweep_iter = None
        self._records_iter = None
        self._values_iter = None
        self._next_sweep = now + self._sweep_interval


def batch_of(*ops: BucketOp, max_delay: float = 0.0) -> Batch:
    """Convenience for tests and callers building a batch by hand."""
    return Batch.of(ops, max_delay)
