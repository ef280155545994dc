"""The embedded store: plain dicts on one event loop.

Atomicity comes from running to completion without an ``await`` between check and write, so it
holds for every coroutine on the loop (use one store per event loop; it is not thread-safe).

Memory stays bounded by the number of *active* buckets: a GCRA bucket whose ``tat`` has passed is
full, so its key carries no information and is dropped; window and concurrency buckets likewise
once their windows or leases lapse. Eviction is an incremental sweep (``sweep_batch`` keys per
decision once ``sweep_interval`` has elapsed), so no single decision pays for a full scan.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from sluicegate.algorithms import (
    concurrency_acquire,
    concurrency_release,
    fixed_window,
    gcra,
    gcra_adjust,
    sliding_window,
)
from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    BucketOp,
    BucketResult,
    Limit,
    SettleResult,
    SettleStatus,
)

_GCRA = Algorithm.GCRA
_SLIDING = Algorithm.SLIDING_WINDOW
_FIXED = Algorithm.FIXED_WINDOW
_CONC = Algorithm.CONCURRENCY
_EMPTY_WINDOW: tuple[int, float, float] = (-(2**62), 0.0, 0.0)


class _Record:
    """A reservation kept for ``settle``."""

    __slots__ = ("reserved", "token_ops", "concurrency_ops", "expires_at", "settled")

    def __init__(
        self,
        reserved: float,
        token_ops: list[tuple[str, Limit]],
        concurrency_ops: list[tuple[str, float]],
        expires_at: float,
    ) -> None:
        self.reserved = reserved
        self.token_ops = token_ops
        self.concurrency_ops = concurrency_ops
        self.expires_at = expires_at
        self.settled = False


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

    def __init__(self, *, sweep_interval: float = 1.0, sweep_batch: int = 512) -> None:
        self._buckets: dict[str, Any] = {}
        self._records: dict[str, _Record] = {}
        self._sweep_interval = sweep_interval
        self._sweep_batch = sweep_batch
        self._next_sweep = -math.inf
        self._sweep_iter: Iterator[str] | None = None
        self._records_iter: Iterator[str] | None = None

    # -- introspection (tests, benchmarks, admin status) ------------------------------------
    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def reservation_count(self) -> int:
        return len(self._records)

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
        ops = batch.ops
        max_delay = batch.max_delay
        results: list[BucketResult] = []
        pending: list[tuple[str, Any]] = []
        allowed = True
        delay = 0.0
        for op in ops:
            key, limit, cost = op
            algo = limit.algorithm
            if algo is _GCRA:
                tat = buckets.get(key, 0.0)
                r = gcra(tat, now, cost, limit.period, limit.capacity, max_delay)
                results.append(BucketResult(r.allowed, r.remaining, r.reset, r.retry_after))
                if r.allowed:
                    if r.tat != tat:
                        pending.append((key, r.tat))
                    if r.delay > delay:
                        delay = r.delay
                else:
                    allowed = False
            elif algo is _CONC:
                held = buckets.get(key)
                in_flight = held[0] if held is not None and held[1] > now else 0.0
                ok, new, remaining = concurrency_acquire(in_flight, cost, limit.capacity)
                retry = 0.0 if ok else (math.inf if cost > limit.capacity else 1.0)
                results.append(BucketResult(ok, remaining, 0.0, retry))
                if ok:
                    pending.append((key, [new, now + limit.period]))
                else:
                    allowed = False
            else:
                stored = buckets.get(key)
                state = stored[:3] if stored is not None else _EMPTY_WINDOW
                fn = sliding_window if algo is _SLIDING else fixed_window
                w = fn(state, now, cost, limit.capacity, limit.period)
                results.append(BucketResult(w.allowed, w.remaining, w.reset, w.retry_after))
                if w.allowed:
                    if w.state != state:
                        pending.append((key, (*w.state, limit.period)))
                else:
                    allowed = False
        if not allowed:
            return BatchResult(False, 0.0, tuple(results))
        for key, value in pending:
            buckets[key] = value
        res = batch.reservation
        if res is not None:
            self._records[res.id] = _Record(
                res.reserved,
                [(ops[i].key, ops[i].limit) for i in res.token_ops],
                [(ops[i].key, ops[i].cost) for i in res.concurrency_ops],
                now + res.ttl,
            )
        return BatchResult(True, delay, tuple(results))

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        return self.settle_sync(reservation_id, actual, now)

    def settle_sync(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        """Synchronous body of :meth:`settle`."""
        record = self._records.get(reservation_id)
        if record is None or record.expires_at <= now:
            return SettleResult(SettleStatus.UNKNOWN, 0.0)
        if record.settled:
            return SettleResult(SettleStatus.DUPLICATE, 0.0)
        record.settled = True
        delta = actual - record.reserved
        buckets = self._buckets
        if delta != 0:
            for key, limit in record.token_ops:
                if limit.algorithm is _GCRA:
                    new_tat = gcra_adjust(buckets.get(key, 0.0), now, delta, limit.period)
                    if new_tat > now:
                        buckets[key] = new_tat
                    else:
                        buckets.pop(key, None)
                else:
                    self._adjust_window(key, limit, delta, now)
        for key, cost in record.concurrency_ops:
            held = buckets.get(key)
            if held is not None:
                held[0] = concurrency_release(held[0], cost)
                if held[0] <= 0:
                    del buckets[key]
        return SettleResult(SettleStatus.APPLIED, delta)

    async def aclose(self) -> None:
        self._buckets.clear()
        self._records.clear()

    # -- internals ----------------------------------------------------------------------------
    def _adjust_window(self, key: str, limit: Limit, delta: float, now: float) -> None:
        """Settle on a window counter: add to (or take from, never below 0) the current count."""
        stored = self._buckets.get(key)
        index = math.floor(now / limit.period)
        if stored is None or stored[0] != index:
            if delta <= 0:
                return  # the window the reservation was counted in is gone; nothing to refund
            prev = stored[2] if stored is not None and stored[0] == index - 1 else 0.0
            self._buckets[key] = (index, prev, delta, limit.period)
            return
        self._buckets[key] = (index, stored[1], max(0.0, stored[2] + delta), limit.period)

    def _sweep(self, now: float) -> None:
        """Drop up to ``sweep_batch`` idle buckets and expired reservations."""
        budget = self._sweep_batch
        buckets = self._buckets
        if self._sweep_iter is None:
            self._sweep_iter = iter(list(buckets))
        for key in self._sweep_iter:
            value = buckets.get(key)
            if value is not None and _expired(value, now):
                del buckets[key]
            budget -= 1
            if budget <= 0:
                return
        records = self._records
        if self._records_iter is None:
            self._records_iter = iter(list(records))
        for rid in self._records_iter:
            record = records.get(rid)
            if record is not None and record.expires_at <= now:
                del records[rid]
            budget -= 1
            if budget <= 0:
                return
        # A full pass is complete: rest until the next interval.
        self._sweep_iter = None
        self._records_iter = None
        self._next_sweep = now + self._sweep_interval


def batch_of(*ops: BucketOp, max_delay: float = 0.0) -> Batch:
    """Convenience for tests and callers building a batch by hand."""
    return Batch(tuple(ops), max_delay, None)
