"""FailoverStore on a scripted primary and a virtual clock: modes, transitions, logs, counters,
backoff and recovery, exactly (the real-server fault tests are in test_redis_faults.py)."""

from __future__ import annotations

import logging
import math

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.errors import ConfigurationError, StoreProtocolError, StoreUnavailable
from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    BucketOp,
    Limit,
    Reservation,
    SettleResult,
    SettleStatus,
)
from sluicegate.stores.failover import FailoverStore, StoreState, divide_limit
from sluicegate.stores.memory import MemoryStore


class ScriptedPrimary:
    """A MemoryStore that fails while ``down`` is set."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down: Exception | None = None
        self.calls = 0

    async def apply(self, batch: Batch, now: float) -> BatchResult:
        self.calls += 1
        if self.down is not None:
            raise self.down
        return await self.inner.apply(batch, now)

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        if self.down is not None:
            raise self.down
        return await self.inner.settle(reservation_id, actual, now)

    async def aclose(self) -> None:
        await self.inner.aclose()


LIMIT = Limit(Algorithm.GCRA, 1.0, 10.0)  # burst 10, 1/s
OP = BucketOp("sg:{t}:s:a:s:requests", LIMIT, 1)
DOWN = StoreUnavailable("cannot reach redis at 127.0.0.1:1: connection refused")


def make(mode: str, **kw: object) -> tuple[FailoverStore, ScriptedPrimary, VirtualClock]:
    primary = ScriptedPrimary()
    clock = VirtualClock(100.0)
    store = FailoverStore(primary, mode=mode, clock=clock, name="redis test", **kw)  # type: ignore[arg-type]
    return store, primary, clock


async def test_fail_closed_raises_logs_counts_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, primary, clock = make("fail_closed", backoff=0.5, max_backoff=2.0)
    assert (await store.apply(Batch.of((OP,)), 0.0)).allowed
    primary.down = DOWN
    caplog.set_level(logging.WARNING, "sluicegate.stores.failover")
    for _ in range(5):
        with pytest.raises(StoreUnavailable, match="failing closed: cannot reach redis"):
            await store.apply(Batch.of((OP,)), 0.0)
    assert store.state is StoreState.DEGRADED
    assert primary.calls == 2  # only the first failure reached the primary: no probe yet
    [record] = [r for r in caplog.records if getattr(r, "sg_event", None) == "store_transition"]
    assert (record.sg_from, record.sg_to, record.sg_mode) == ("healthy", "degraded", "fail_closed")  # type: ignore[attr-defined]
    assert "connection refused" in record.getMessage()
    # Probes: one per backoff, doubling 0.5 -> 1 -> 2 (capped).
    for wait in (0.5, 1.0, 2.0, 2.0):
        clock.advance(wait - 0.01)
        with pytest.raises(StoreUnavailable):
            await store.apply(Batch.of((OP,)), 0.0)
        before = primary.calls
        clock.advance(0.01)
        with pytest.raises(StoreUnavailable):
            await store.apply(Batch.of((OP,)), 0.0)
        assert primary.calls == before + 1
    primary.down = None
    clock.advance(2.0)
    assert (await store.apply(Batch.of((OP,)), 0.0)).allowed  # the probe's own result
    assert store.healthy
    c = store.counters
    assert (c.degraded, c.recovered, c.probes, c.probe_failures) == (1, 1, 5, 4)
    assert c.fail_closed_refusals == 5 + 8
    transitions = [r for r in caplog.records if getattr(r, "sg_event", None) == "store_transition"]
    assert [r.sg_to for r in transitions] == ["degraded", "healthy"]  # type: ignore[attr-defined]
    assert "outage_s=" in transitions[1].getMessage()


async def test_fail_open_admits_and_counts() -> None:
    store, primary, _ = make("fail_open")
    primary.down = DOWN
    results = [await store.apply(Batch.of((OP,)), 0.0) for _ in range(50)]
    assert all(r.allowed and r.delay == 0.0 for r in results)
    assert results[0].remaining == [9] and results[0].retry_after == [0.0]
    assert store.counters.fail_open_admits == 50
    assert (await store.settle("x", 1.0, 0.0)).status is SettleStatus.UNKNOWN
    assert store.counters.settles_dropped == 1


async def test_local_mode_divides_every_limit_by_the_replicas() -> None:
    store, primary, _ = make("local", replicas=4)
    primary.down = DOWN
    got = [(await store.apply(Batch.of((OP,)), 50.0)).allowed for _ in range(5)]
    assert got == [True, True, False, False, False]  # burst 10 / 4 = 2.5
    # ... and the rate: 1/s / 4 = one unit per 4 s
    assert not (await store.apply(Batch.of((OP,)), 51.0)).allowed
    assert (await store.apply(Batch.of((OP,)), 52.0)).allowed
    assert store.counters.local_decisions == 7


async def test_local_reservations_settle_locally() -> None:
    store, primary, _ = make("local", replicas=2)
    primary.down = DOWN
    tokens = BucketOp("sg:{t}:t:tokens", Limit(Algorithm.GCRA, 0.001, 1000.0), 400)
    res = Reservation("r1", 400, (0,), (), 60)
    assert (await store.apply(Batch.of((tokens,), 0.0, res), 0.0)).allowed
    assert (await store.settle("r1", 100, 0.0)).delta == -300
    assert (await store.settle("r1", 100, 0.0)).status is SettleStatus.UNKNOWN


def test_divide_limit() -> None:
    assert divide_limit(LIMIT, 1) == LIMIT
    assert divide_limit(LIMIT, 4) == Limit(Algorithm.GCRA, 4.0, 2.5)
    assert divide_limit(Limit(Algorithm.GCRA, 1.0, 2.0), 4).capacity == 1.0  # never below 1
    assert divide_limit(Limit(Algorithm.SLIDING_WINDOW, 60.0, 100.0), 4) == Limit(
        Algorithm.SLIDING_WINDOW, 60.0, 25.0
    )
    assert divide_limit(Limit(Algorithm.CONCURRENCY, 300.0, 5.0), 4).capacity == 1.0


async def test_protocol_errors_are_not_outages() -> None:
    store, primary, _ = make("fail_open")
    primary.down = StoreProtocolError("redis refused a sluicegate script: ERR bad")
    with pytest.raises(StoreProtocolError):
        await store.apply(Batch.of((OP,)), 0.0)
    assert store.healthy and store.counters.protocol_errors == 1


async def test_settle_while_down_in_fail_closed_raises() -> None:
    store, primary, _ = make("fail_closed")
    primary.down = DOWN
    with pytest.raises(StoreUnavailable, match="settlement not applied"):
        await store.settle("r", 1.0, 0.0)


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError, match="unknown failure mode 'nope'"):
        FailoverStore(MemoryStore(), mode="nope")
    with pytest.raises(ConfigurationError, match="replicas"):
        FailoverStore(MemoryStore(), replicas=0)


async def test_status_reports_state_and_counters() -> None:
    store, primary, _ = make("fail_open")
    primary.down = DOWN
    await store.apply(Batch.of((OP,)), 0.0)
    status = store.status()
    assert status["state"] == "degraded" and status["mode"] == "fail_open"
    assert "connection refused" in str(status["last_error"])
    assert isinstance(status["counters"], dict) and status["counters"]["fail_open_admits"] == 1
    assert not math.isnan(float(str(status["since"])))
