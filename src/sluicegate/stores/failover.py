"""What a decision gets while the shared store is down: the configured failure mode.

:class:`FailoverStore` wraps a primary store (Redis, Redis Cluster) and, when the primary raises a
*transient* :class:`~sluicegate.errors.StoreError` (unreachable, timed out, failing over), serves
every decision in one of three modes until the primary answers again:

``fail_closed``  raise :class:`~sluicegate.errors.StoreUnavailable`; the engine refuses the call
                 (a 503 with a clear reason). Nothing is admitted that the limits did not check.
``fail_open``    admit, and count it (``counters.fail_open_admits``). Availability over limits.
``local``        decide on an in-process :class:`~sluicegate.stores.memory.MemoryStore`, with each
                 limit divided by ``replicas`` (the number of sluicegate processes sharing the
                 primary), so the fleet as a whole stays near the global limit. State starts
                 empty at each outage (full buckets: at most one burst / replicas per process).

No silent mode changes: every transition (``healthy -> degraded`` and back) is logged on the
``sluicegate.stores.failover`` logger with structured ``extra`` fields (``sg_event``,
``sg_store``, ``sg_from``, ``sg_to``, ``sg_mode``, ``sg_reason``) and counted in
:attr:`FailoverStore.counters`.

Recovery is automatic: while degraded, the first decision after a backoff (0.5 s, doubling up
to 5 s) is sent to the primary as a probe; if it succeeds the store is healthy again and that
decision's result is the primary's. Only one probe is in flight at a time, so a dead primary
costs at most one bounded timeout per backoff interval, not one per decision.

Non-transient errors (:class:`~sluicegate.errors.StoreProtocolError`: the primary answered
something unusable, e.g. a script error) are not outages: they propagate and are counted.

Shared values (``put_value`` / ``get_value`` / ``list_values``) go to the primary and share its
health: a failing value call degrades the store as a failing decision does, a value call after
the backoff may be the probe, and while degraded they follow the mode. ``fail_closed`` raises
:class:`~sluicegate.errors.StoreUnavailable` (``counters.value_refusals``); ``fail_open`` and
``local`` read and write the in-process fallback store (``counters.local_values``). That store
starts empty at each outage and is not read after recovery: during an outage a replica sees only
the values it wrote itself, and those are not copied to the primary afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TypeVar

from sluicegate.clock import Clock, MonotonicClock
from sluicegate.errors import ConfigurationError, StoreError, StoreUnavailable
from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    Limit,
    SettleResult,
    SettleStatus,
    Store,
    check_value,
)
from sluicegate.stores.memory import MemoryStore

__all__ = ["FailoverCounters", "FailoverStore", "FailureMode"]

_T = TypeVar("_T")

log = logging.getLogger("sluicegate.stores.failover")


class FailureMode(StrEnum):
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"
    LOCAL = "local"


class StoreState(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"


@dataclass
class FailoverCounters:
    """Plain counters (exported to Prometheus by whoever scrapes them)."""

    primary_errors: int = 0  #: transient errors from the primary
    protocol_errors: int = 0  #: non-transient errors, propagated
    degraded: int = 0  #: healthy -> degraded transitions
    recovered: int = 0  #: degraded -> healthy transitions
    probes: int = 0  #: decisions sent to the primary while degraded
    probe_failures: int = 0
    fail_closed_refusals: int = 0  #: decisions refused because the store was unavailable
    fail_open_admits: int = 0  #: decisions admitted without any check
    local_decisions: int = 0  #: decisions made on the local fallback store
    settles_dropped: int = 0  #: settlements that could not reach the primary
    value_refusals: int = 0  #: value calls refused (fail_closed) because the store was unavailable
    local_values: int = 0  #: value calls served by the local fallback store (fail_open, local)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def divide_limit(limit: Limit, replicas: int) -> Limit:
    """One process's share of a global limit: rate and capacity divided by ``replicas``.

    A capacity never drops below ``min(capacity, 1)``, so a request bucket keeps admitting at
    its (divided) rate instead of refusing every call of cost 1 as "can never fit".
    """
    if replicas <= 1:
        return limit
    algo, period, capacity = limit
    share = max(capacity / replicas, min(capacity, 1.0))
    if algo is Algorithm.GCRA:
        # period is the emission interval (seconds per unit): 1/N of the rate is N x the interval.
        return Limit(algo, period * replicas, share)
    if algo is Algorithm.CONCURRENCY:
        return Limit(algo, period, float(max(1, math.floor(capacity / replicas))))
    return Limit(algo, period, share)


class FailoverStore:
    """A :class:`~sluicegate.stores.base.Store` that applies a failure mode around ``primary``.

    ``mode``        ``fail_closed`` (default), ``fail_open`` or ``local``
    ``replicas``    processes sharing the primary; ``local`` divides every limit by it
    ``backoff``     seconds before the first recovery probe; doubles up to ``max_backoff``
    ``clock``       time source for the backoff (injected; defaults to the monotonic clock)
    ``name``        how logs and errors name the primary (e.g. ``redis 10.0.0.5:6379``)
    """

    def __init__(
        self,
        primary: Store,
        *,
        mode: FailureMode | str = FailureMode.FAIL_CLOSED,
        replicas: int = 1,
        backoff: float = 0.5,
        max_backoff: float = 5.0,
        clock: Clock | None = None,
        name: str = "store",
    ) -> None:
        try:
            self.mode = FailureMode(mode)
        except ValueError:
            allowed = ", ".join(m.value for m in FailureMode)
            raise ConfigurationError(
                f"unknown failure mode {mode!r} (allowed: {allowed})"
            ) from None
        if replicas < 1:
            raise ConfigurationError(f"replicas must be >= 1, got {replicas!r}")
        if not 0 < backoff <= max_backoff:
            raise ConfigurationError("need 0 < backoff <= max_backoff")
        self.primary = primary
        self.replicas = replicas
        self.name = name
        self.counters = FailoverCounters()
        self._clock: Clock = clock or MonotonicClock()
        self._initial_backoff = backoff
        self._max_backoff = max_backoff
        self._backoff = backoff
        self._state = StoreState.HEALTHY
        self._since = self._clock.now()
        self._next_probe = 0.0
        self._probing = False
        self._last_error = ""
        self._local = MemoryStore()
        self._local_ids: dict[str, float] = {}
        self._divided: dict[Limit, Limit] = {}

    # -- status ------------------------------------------------------------------------------
    @property
    def state(self) -> StoreState:
        return self._state

    @property
    def healthy(self) -> bool:
        return self._state is StoreState.HEALTHY

    def status(self) -> dict[str, object]:
        """For an admin endpoint: state, mode, since when, last error, counters."""
        return {
            "store": self.name,
            "state": self._state.value,
            "mode": self.mode.value,
            "since": self._since,
            "last_error": self._last_error,
            "counters": self.counters.as_dict(),
        }

    # -- Store protocol -----------------------------------------------------------------------
    async def apply(self, batch: Batch, now: float) -> BatchResult:
        if self._state is StoreState.HEALTHY:
            try:
                return await self.primary.apply(batch, now)
            except StoreError as exc:
                self._on_error(exc)
                return self._fallback(batch, now, exc)
        if self._probing or self._clock.now() < self._next_probe:
            return self._fallback(batch, now, None)
        self._probing = True
        self.counters.probes += 1
        try:
            result = await self.primary.apply(batch, now)
        except StoreError as exc:
            self._on_error(exc)
            self.counters.probe_failures += 1
            self._backoff = min(self._backoff * 2, self._max_backoff)
            self._next_probe = self._clock.now() + self._backoff
            return self._fallback(batch, now, exc)
        finally:
            self._probing = False
        self._transition(StoreState.HEALTHY, "probe succeeded")
        return result

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        if self._local_ids.pop(reservation_id, None) is not None:
            return self._local.settle_sync(reservation_id, actual, now)
        if self._state is StoreState.HEALTHY:
            try:
                return await self.primary.settle(reservation_id, actual, now)
            except StoreError as exc:
                self._on_error(exc)
                return self._settle_unavailable(exc)
        return self._settle_unavailable(None)

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        check_value(value, ttl)  # a bad argument is the caller's error, never an outage
        await self._route_value(
            f"put_value {key}",
            lambda: self.primary.put_value(key, value, ttl, now),
            lambda local: local.put_value_sync(key, value, ttl, now),
        )

    async def get_value(self, key: str, now: float) -> str | None:
        return await self._route_value(
            f"get_value {key}",
            lambda: self.primary.get_value(key, now),
            lambda local: local.get_value_sync(key, now),
        )

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        return await self._route_value(
            f"list_values {prefix}",
            lambda: self.primary.list_values(prefix, now),
            lambda local: local.list_values_sync(prefix, now),
        )

    async def aclose(self) -> None:
        try:
            await self.primary.aclose()
        finally:
            await self._local.aclose()

    # -- internals ----------------------------------------------------------------------------
    def _on_error(self, exc: StoreError) -> None:
        if not exc.transient:
            self.counters.protocol_errors += 1
            raise exc
        self.counters.primary_errors += 1
        self._last_error = str(exc)
        if self._state is StoreState.HEALTHY:
            self._backoff = self._initial_backoff
            self._next_probe = self._clock.now() + self._backoff
            self._local = MemoryStore()
            self._local_ids = {}
            self._transition(StoreState.DEGRADED, str(exc))

    def _transition(self, to: StoreState, reason: str) -> None:
        before = self._state
        self._state = to
        now = self._clock.now()
        outage = now - self._since
        self._since = now
        if to is StoreState.DEGRADED:
            self.counters.degraded += 1
            log.warning(
                "store_transition store=%s from=%s to=%s mode=%s reason=%s",
                self.name, before.value, to.value, self.mode.value, reason,
                extra=self._extra(before, to, reason),
            )  # fmt: skip
        else:
            self.counters.recovered += 1
            log.warning(
                "store_transition store=%s from=%s to=%s mode=%s reason=%s outage_s=%.3f",
                self.name, before.value, to.value, self.mode.value, reason, outage,
                extra=self._extra(before, to, reason),
            )  # fmt: skip

    def _extra(self, before: StoreState, to: StoreState, reason: str) -> dict[str, object]:
        return {
            "sg_event": "store_transition",
            "sg_store": self.name,
            "sg_from": before.value,
            "sg_to": to.value,
            "sg_mode": self.mode.value,
            "sg_reason": reason,
        }

    def _fallback(self, batch: Batch, now: float, exc: StoreError | None) -> BatchResult:
        mode = self.mode
        if mode is FailureMode.FAIL_CLOSED:
            self.counters.fail_closed_refusals += 1
            reason = str(exc) if exc is not None else self._last_error
            raise StoreUnavailable(f"{self.name} unavailable, failing closed: {reason}")
        if mode is FailureMode.FAIL_OPEN:
            self.counters.fail_open_admits += 1
            n = len(batch.keys)
            remaining = [
                max(0, math.floor(limit[2] - cost))
                for limit, cost in zip(batch.limits, batch.costs, strict=True)
            ]
            return BatchResult(True, 0.0, remaining, [0.0] * n, [0.0] * n)
        self.counters.local_decisions += 1
        divided = self._divided
        limits = []
        for limit in batch.limits:
            share = divided.get(limit)
            if share is None:
                share = divided[limit] = divide_limit(limit, self.replicas)
            limits.append(share)
        local = Batch(batch.keys, limits, batch.costs, batch.max_delay, batch.reservation)
        result = self._local.apply_sync(local, now)
        res = batch.reservation
        if result.allowed and res is not None:
            if len(self._local_ids) > 100_000:
                self._local_ids = {k: v for k, v in self._local_ids.items() if v > now}
            self._local_ids[res.id] = now + res.ttl
        return result

    async def _route_value(
        self,
        what: str,
        primary: Callable[[], Awaitable[_T]],
        local: Callable[[MemoryStore], _T],
    ) -> _T:
        """A value call on the primary with the same health bookkeeping as :meth:`apply`
        (errors degrade, a call after the backoff probes, a successful probe recovers), else
        the mode's answer. ``local`` takes the fallback store as an argument because an outage
        that starts during the call replaces it."""
        if self._state is StoreState.HEALTHY:
            try:
                return await primary()
            except StoreError as exc:
                self._on_error(exc)
                return self._value_fallback(what, local, exc)
        if self._probing or self._clock.now() < self._next_probe:
            return self._value_fallback(what, local, None)
        self._probing = True
        self.counters.probes += 1
        try:
            result = await primary()
        except StoreError as exc:
            self._on_error(exc)
            self.counters.probe_failures += 1
            self._backoff = min(self._backoff * 2, self._max_backoff)
            self._next_probe = self._clock.now() + self._backoff
            return self._value_fallback(what, local, exc)
        finally:
            self._probing = False
        self._transition(StoreState.HEALTHY, "probe succeeded")
        return result

    def _value_fallback(
        self, what: str, local: Callable[[MemoryStore], _T], exc: StoreError | None
    ) -> _T:
        if self.mode is FailureMode.FAIL_CLOSED:
            self.counters.value_refusals += 1
            reason = str(exc) if exc is not None else self._last_error
            raise StoreUnavailable(f"{self.name} unavailable, failing closed ({what}): {reason}")
        self.counters.local_values += 1
        return local(self._local)

    def _settle_unavailable(self, exc: StoreError | None) -> SettleResult:
        self.counters.settles_dropped += 1
        if self.mode is FailureMode.FAIL_CLOSED:
            reason = str(exc) if exc is not None else self._last_error
            raise StoreUnavailable(f"{self.name} unavailable, settlement not applied: {reason}")
        return SettleResult(SettleStatus.UNKNOWN, 0.0)
