"""What a decision gets while the shared store is down: the configured failure mode.

:class:`FailoverStore` wraps a primary store (Redis, Redis Cluster) and, when the primary raises a
*transient* :class:`~sluicegate.errors.StoreError` (unreachable, timed out, failing over), serves
the decisions that need the failing part of the primary in one of three modes until it answers
again:

``fail_closed``  raise :class:`~sluicegate.errors.StoreUnavailable`; the engine refuses the call
                 (a 503 with a clear reason). Nothing is admitted that the limits did not check.
``fail_open``    admit, and count it (``counters.fail_open_admits``). Availability over limits.
``local``        decide on an in-process :class:`~sluicegate.stores.memory.MemoryStore`, with each
                 limit divided by ``replicas`` (the number of sluicegate processes sharing the
                 primary), so the fleet as a whole stays near the global limit. State starts
                 empty at each outage (full buckets: at most one burst / replicas per process).

**Per shard.** A primary that keeps its keys on independent shards (Redis Cluster) says so with
the :class:`Partitioned` methods: which shards (primaries, by name) a decision's keys live on.
Health is then kept per shard: a decision whose shards all answer goes to the primary as usual,
even while another shard is failing, and only a decision that touches a failing shard (a
tenant's slot, or the pool slot of a two-phase pool decision) gets the mode's answer. A primary
without those methods (standalone Redis) is one shard: the whole store fails over together.

A failing call that touched one shard degrades that shard. One that touched several (a pool
decision, a listing) cannot say which one failed: it degrades those of its shards that have not
answered any other call since it started (under load, the healthy shards have), and none if
all have (then it was slow, not an outage: only that decision gets the mode's answer).

No silent mode changes: every transition (``healthy -> degraded`` and back, per shard) is logged
on the ``sluicegate.stores.failover`` logger with structured ``extra`` fields (``sg_event``,
``sg_store``, ``sg_partition``, ``sg_from``, ``sg_to``, ``sg_mode``, ``sg_reason``) and counted in
:attr:`FailoverStore.counters` (aggregate over the shards).

Recovery is automatic: while a shard is degraded, the first decision on it after a backoff
(0.5 s, doubling up to 5 s) is sent to the primary as a probe; if it succeeds the shard is
healthy again and that decision's result is the primary's. Only one probe per shard is in flight
at a time, so a dead shard costs at most one bounded timeout per backoff interval, not one per
decision. While a shard is degraded its slot map is refreshed every ``backoff`` seconds
(:meth:`Partitioned.refresh_partitions`), so when a failover promotes a replica, the slots'
decisions go to the new primary (a shard of a new name, healthy) as soon as the map shows it;
the old shard's record is dropped (counted and logged as recovered, reason ``no longer a
primary``) once the map no longer lists it.

Non-transient errors (:class:`~sluicegate.errors.StoreProtocolError`: the primary answered
something unusable, e.g. a script error) are not outages: they propagate and are counted.

Shared values (``put_value`` / ``get_value`` / ``list_values``) go to the primary and share the
health of their key's shard (a listing: of every shard): a failing value call degrades it as a
failing decision does, a value call after the backoff may be the probe, and while degraded they
follow the mode. ``fail_closed`` raises :class:`~sluicegate.errors.StoreUnavailable`
(``counters.value_refusals``); ``fail_open`` and ``local`` read and write the in-process fallback
store (``counters.local_values``). That store starts empty at each outage (when the first shard
degrades while all others are healthy) and is not read after recovery: during an outage a
replica sees only the values it wrote itself, and those are not copied to the primary afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Protocol, TypeVar, runtime_checkable

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

__all__ = ["FailoverCounters", "FailoverStore", "FailureMode", "Partitioned"]

_T = TypeVar("_T")

log = logging.getLogger("sluicegate.stores.failover")

#: The one shard of a primary that is not :class:`Partitioned`.
WHOLE = ""

#: Seconds between two checks, while a shard is degraded, for shards the slot map no longer has.
PRUNE_INTERVAL = 0.1


class FailureMode(StrEnum):
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"
    LOCAL = "local"


class StoreState(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"


@runtime_checkable
class Partitioned(Protocol):
    """The optional ability of a primary whose keys live on independent shards (Redis Cluster:
    a shard is a primary node, named ``host:port``). Names come from the primary's current
    slot map, so they change when a failover promotes a replica."""

    def partitions(self, keys: Sequence[str]) -> tuple[str, ...]:
        """The shards serving ``keys``, each once (keyless: where such a call goes)."""
        ...

    def reservation_partitions(self, reservation_id: str) -> tuple[str, ...]:
        """The shards a ``settle`` of this reservation needs."""
        ...

    def all_partitions(self) -> tuple[str, ...]:
        """Every shard (empty while the primary does not know them yet)."""
        ...

    def refresh_partitions(self) -> None:
        """Re-read the shard map soon (in the background)."""
        ...


@dataclass
class FailoverCounters:
    """Plain counters (exported to Prometheus by whoever scrapes them), summed over shards."""

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


class _Health:
    """One shard's health: state, backoff, next probe, whether a probe is in flight."""

    __slots__ = ("name", "state", "since", "backoff", "next_probe", "probing", "last_error", "ok")

    def __init__(self, name: str, now: float, backoff: float) -> None:
        self.name = name
        self.state = StoreState.HEALTHY
        self.since = now
        self.backoff = backoff
        self.next_probe = 0.0
        self.probing = False
        self.last_error = ""
        self.ok = 0  #: calls on this shard that succeeded (evidence that it answers)


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

    If ``primary`` is :class:`Partitioned` (Redis Cluster), health is kept per shard.
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
        self._shards: Partitioned | None = primary if isinstance(primary, Partitioned) else None
        now = self._clock.now()
        self._health: dict[str, _Health] = {}
        self._degraded: set[str] = set()  #: names of the degraded shards
        self._since = now  #: when the overall state last changed
        self._outage_ended = -math.inf  #: when the overall state last became healthy
        self._last_error = ""
        self._next_refresh = -math.inf
        self._next_prune = -math.inf
        self._local = MemoryStore()
        self._local_ids: dict[str, float] = {}
        self._divided: dict[Limit, Limit] = {}

    # -- status ------------------------------------------------------------------------------
    @property
    def state(self) -> StoreState:
        """Degraded while any shard is."""
        if self._degraded and self._shards is not None:
            self._prune()
        return StoreState.DEGRADED if self._degraded else StoreState.HEALTHY

    @property
    def healthy(self) -> bool:
        return self.state is StoreState.HEALTHY

    def status(self) -> dict[str, object]:
        """For an admin endpoint: state, mode, since when, last error, counters; on a sharded
        primary also ``partitions``: each shard's state, since, last error and next probe."""
        state = self.state
        out: dict[str, object] = {
            "store": self.name,
            "state": state.value,
            "mode": self.mode.value,
            "since": self._since,
            "last_error": self._last_error,
            "counters": self.counters.as_dict(),
        }
        if self._shards is not None:
            now = self._clock.now()
            names = set(self._shards.all_partitions()) | set(self._degraded)
            shards: dict[str, object] = {}
            for name in sorted(names):
                h = self._health.get(name)
                if h is None:
                    shards[name] = {"state": StoreState.HEALTHY.value}
                    continue
                entry: dict[str, object] = {"state": h.state.value, "since": h.since}
                if h.state is StoreState.DEGRADED:
                    entry["last_error"] = h.last_error
                    entry["next_probe_in"] = max(0.0, h.next_probe - now)
                shards[name] = entry
            out["partitions"] = shards
        return out

    # -- Store protocol -----------------------------------------------------------------------
    async def apply(self, batch: Batch, now: float) -> BatchResult:
        shards = self._shards
        names = (WHOLE,) if shards is None else shards.partitions(batch.keys)
        return await self._route(
            names,
            lambda: self.primary.apply(batch, now),
            lambda h, reason: self._fallback(batch, now, h, reason),
        )

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        if self._local_ids.pop(reservation_id, None) is not None:
            return self._local.settle_sync(reservation_id, actual, now)
        shards = self._shards
        names = (WHOLE,) if shards is None else shards.reservation_partitions(reservation_id)
        health = [self._get(n) for n in names]
        for h in health:
            if h.state is StoreState.DEGRADED:
                self._while_degraded()
                return self._settle_unavailable(h, h.last_error)
        before = [h.ok for h in health] if len(health) > 1 else None
        try:
            result = await self.primary.settle(reservation_id, actual, now)
        except StoreError as exc:
            blamed = self._on_error(exc, health, before, probing=())
            return self._settle_unavailable(blamed, str(exc))
        for h in health:
            h.ok += 1
        return result

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        check_value(value, ttl)  # a bad argument is the caller's error, never an outage
        await self._route_value(
            f"put_value {key}",
            self._names((key,)),
            lambda: self.primary.put_value(key, value, ttl, now),
            lambda local: local.put_value_sync(key, value, ttl, now),
        )

    async def get_value(self, key: str, now: float) -> str | None:
        return await self._route_value(
            f"get_value {key}",
            self._names((key,)),
            lambda: self.primary.get_value(key, now),
            lambda local: local.get_value_sync(key, now),
        )

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        shards = self._shards
        names: tuple[str, ...] = (WHOLE,)
        if shards is not None:
            # A listing needs every shard; before discovery, whatever keyless calls need.
            names = shards.all_partitions() or shards.partitions(())
        return await self._route_value(
            f"list_values {prefix}",
            names,
            lambda: self.primary.list_values(prefix, now),
            lambda local: local.list_values_sync(prefix, now),
        )

    async def aclose(self) -> None:
        try:
            await self.primary.aclose()
        finally:
            await self._local.aclose()

    # -- routing ------------------------------------------------------------------------------
    def _names(self, keys: Sequence[str]) -> tuple[str, ...]:
        shards = self._shards
        return (WHOLE,) if shards is None else shards.partitions(keys)

    def _get(self, name: str) -> _Health:
        h = self._health.get(name)
        if h is None:
            if len(self._health) > 1024:  # names come from the slot map: a handful; never grow
                self._health = {n: x for n, x in self._health.items() if n in self._degraded}
            h = self._health[name] = _Health(name, self._clock.now(), self._initial_backoff)
        return h

    async def _route(
        self,
        names: tuple[str, ...],
        call: Callable[[], Awaitable[_T]],
        fallback: Callable[[_Health, str], _T],
    ) -> _T:
        """``call`` on the primary if every shard in ``names`` is healthy, or degraded but due
        for a probe (then this call is the probe for those shards); else ``fallback`` with the
        shard that stands in the way. Errors degrade the shards they can be blamed on."""
        health = [self._get(n) for n in names]
        due: list[_Health] = []
        if self._degraded:
            now = self._clock.now()
            for h in health:
                if h.state is StoreState.DEGRADED:
                    if h.probing or now < h.next_probe:
                        self._while_degraded()
                        return fallback(h, h.last_error)
                    due.append(h)
            for h in due:
                h.probing = True
            if due:
                self.counters.probes += 1
        before = [h.ok for h in health] if len(health) > 1 else None
        try:
            result = await call()
        except StoreError as exc:
            blamed = self._on_error(exc, health, before, probing=due)
            return fallback(blamed, str(exc))
        finally:
            for h in due:
                h.probing = False
        for h in health:
            h.ok += 1
        for h in due:
            if h.state is StoreState.DEGRADED and self._health.get(h.name) is h:
                self._transition(h, StoreState.HEALTHY, "probe succeeded")
        return result

    def _on_error(
        self,
        exc: StoreError,
        health: list[_Health],
        before: list[int] | None,
        *,
        probing: Sequence[_Health],
    ) -> _Health:
        """Count a failed call and degrade the shards it is blamed on (all of them if it touched
        one; else those that did not answer any other call meanwhile); returns the shard to name
        in the fallback's reason. Non-transient errors are re-raised: not outages."""
        if not exc.transient:
            self.counters.protocol_errors += 1
            raise exc
        self.counters.primary_errors += 1
        reason = str(exc)
        self._last_error = reason
        if before is None:
            blamed = health
        else:
            blamed = [h for h, ok in zip(health, before, strict=True) if h.ok == ok]
        if probing:
            self.counters.probe_failures += 1
        now = self._clock.now()
        for h in blamed:
            if self._health.get(h.name) is not h:
                continue  # dropped meanwhile (no longer a primary): nothing to degrade
            h.last_error = reason
            if h.state is StoreState.HEALTHY:
                h.backoff = self._initial_backoff
                h.next_probe = now + h.backoff
                if not self._degraded and now - self._outage_ended >= self._max_backoff:
                    # A new outage: the local store starts empty. One that starts soon after
                    # the last one ended (a flapping shard, a shard dropped from the slot map
                    # whose successor fails too) continues it: no fresh local burst per flap.
                    self._local = MemoryStore()
                    self._local_ids = {}
                self._transition(h, StoreState.DEGRADED, reason)
            elif h in probing:
                h.backoff = min(h.backoff * 2, self._max_backoff)
                h.next_probe = now + h.backoff
        if blamed:
            return blamed[0]
        return health[0]

    def _while_degraded(self) -> None:
        """A call met a degraded shard: now and then re-read the slot map (a promoted replica
        takes the slots under a new name) and drop the shards it no longer lists."""
        shards = self._shards
        if shards is None:
            return
        now = self._clock.now()
        if now >= self._next_refresh:
            self._next_refresh = now + self._initial_backoff
            shards.refresh_partitions()
        if now >= self._next_prune:
            self._prune()

    def _prune(self) -> None:
        shards = self._shards
        assert shards is not None
        self._next_prune = self._clock.now() + PRUNE_INTERVAL
        current = set(shards.all_partitions())
        if not current:
            return  # no map yet: nothing to compare with
        for name in [n for n in self._health if n not in current]:
            h = self._health.pop(name)
            if h.state is StoreState.DEGRADED:
                self._transition(h, StoreState.HEALTHY, "no longer a primary")

    def _transition(self, h: _Health, to: StoreState, reason: str) -> None:
        before = h.state
        h.state = to
        now = self._clock.now()
        outage = now - h.since
        h.since = now
        was_degraded = bool(self._degraded)
        if to is StoreState.DEGRADED:
            self._degraded.add(h.name)
        else:
            self._degraded.discard(h.name)
        if was_degraded != bool(self._degraded):
            self._since = now
            if was_degraded:
                self._outage_ended = now
        shard = f" partition={h.name}" if self._shards is not None else ""
        extra = self._extra(h.name, before, to, reason)
        if to is StoreState.DEGRADED:
            self.counters.degraded += 1
            log.warning(
                "store_transition store=%s%s from=%s to=%s mode=%s reason=%s",
                self.name, shard, before.value, to.value, self.mode.value, reason, extra=extra,
            )  # fmt: skip
        else:
            self.counters.recovered += 1
            log.warning(
                "store_transition store=%s%s from=%s to=%s mode=%s reason=%s outage_s=%.3f",
                self.name, shard, before.value, to.value, self.mode.value, reason, outage,
                extra=extra,
            )  # fmt: skip

    def _extra(
        self, shard: str, before: StoreState, to: StoreState, reason: str
    ) -> dict[str, object]:
        return {
            "sg_event": "store_transition",
            "sg_store": self.name,
            "sg_partition": shard if self._shards is not None else None,
            "sg_from": before.value,
            "sg_to": to.value,
            "sg_mode": self.mode.value,
            "sg_reason": reason,
        }

    def _where(self, h: _Health) -> str:
        return f" (partition {h.name})" if self._shards is not None else ""

    # -- the modes ----------------------------------------------------------------------------
    def _fallback(self, batch: Batch, now: float, h: _Health, reason: str) -> BatchResult:
        mode = self.mode
        if mode is FailureMode.FAIL_CLOSED:
            self.counters.fail_closed_refusals += 1
            raise StoreUnavailable(
                f"{self.name}{self._where(h)} unavailable, failing closed: {reason}"
            )
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
        names: tuple[str, ...],
        primary: Callable[[], Awaitable[_T]],
        local: Callable[[MemoryStore], _T],
    ) -> _T:
        """A value call on the primary with the same health bookkeeping as :meth:`apply`
        (errors degrade, a call after the backoff probes, a successful probe recovers), else
        the mode's answer. ``local`` takes the fallback store as an argument because an outage
        that starts during the call replaces it."""
        return await self._route(
            names, primary, lambda h, reason: self._value_fallback(what, local, h, reason)
        )

    def _value_fallback(
        self, what: str, local: Callable[[MemoryStore], _T], h: _Health, reason: str
    ) -> _T:
        if self.mode is FailureMode.FAIL_CLOSED:
            self.counters.value_refusals += 1
            raise StoreUnavailable(
                f"{self.name}{self._where(h)} unavailable, failing closed ({what}): {reason}"
            )
        self.counters.local_values += 1
        return local(self._local)

    def _settle_unavailable(self, h: _Health, reason: str) -> SettleResult:
        self.counters.settles_dropped += 1
        if self.mode is FailureMode.FAIL_CLOSED:
            raise StoreUnavailable(
                f"{self.name}{self._where(h)} unavailable, settlement not applied: {reason}"
            )
        return SettleResult(SettleStatus.UNKNOWN, 0.0)
