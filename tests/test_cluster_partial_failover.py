"""Per-shard failover: one failing Redis Cluster shard puts only the decisions that touch it
into the failure mode; the other shards keep deciding on Redis, exactly.

First on a scripted sharded primary and a virtual clock (blame, probes per shard, slot-map
changes, settle, values, status), then on a real cluster of this module's own: a master paused
(SIGSTOP, fail_closed) and a master killed until its replica takes over (local). Nothing here
asserts on speed: waits are bounded, and latencies only against the timeout plus slack.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.errors import StoreUnavailable
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
from sluicegate.stores.failover import FailoverStore, Partitioned
from sluicegate.stores.memory import MemoryStore
from sluicegate.stores.redis_cluster import RedisClusterStore, slot_of
from tests.redis_servers import RedisClusterProcesses

DOWN = StoreUnavailable("cannot reach redis at cluster x: connection refused")
LIMIT = Limit(Algorithm.GCRA, 1.0, 10.0)  # burst 10, 1/s


def tag_of(key: str) -> str:
    return key[key.index("{") + 1 : key.index("}")]


class ShardedPrimary:
    """A MemoryStore whose keys live on named shards (by hash tag); a shard in ``down``
    fails every call that touches it. ``gate`` holds multi-shard calls until it is set."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.inner = MemoryStore()
        self.owners = owners  # hash tag -> shard
        self.down: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self.refreshes = 0
        self.gate: asyncio.Event | None = None

    def partitions(self, keys: Sequence[str]) -> tuple[str, ...]:
        out: list[str] = []
        for key in keys or ("{r}",):
            name = self.owners[tag_of(key)]
            if name not in out:
                out.append(name)
        return tuple(out)

    def reservation_partitions(self, reservation_id: str) -> tuple[str, ...]:
        return self.partitions((reservation_id,))

    def all_partitions(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.owners.values())))

    def refresh_partitions(self) -> None:
        self.refreshes += 1

    async def _enter(self, keys: Sequence[str]) -> None:
        names = self.partitions(keys)
        self.calls.append(names)
        if len(names) > 1 and self.gate is not None:
            await self.gate.wait()
        if self.down & set(names):
            raise DOWN

    async def apply(self, batch: Batch, now: float) -> BatchResult:
        await self._enter(batch.keys)
        return await self.inner.apply(batch, now)

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        await self._enter((reservation_id,))
        return await self.inner.settle(reservation_id, actual, now)

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        await self._enter((key,))
        await self.inner.put_value(key, value, ttl, now)

    async def get_value(self, key: str, now: float) -> str | None:
        await self._enter((key,))
        return await self.inner.get_value(key, now)

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        await self._enter(["{" + t + "}" for t in self.owners])
        return await self.inner.list_values(prefix, now)

    async def aclose(self) -> None:
        await self.inner.aclose()


def sharded(
    mode: str = "fail_closed", **kw: object
) -> tuple[FailoverStore, ShardedPrimary, VirtualClock]:
    primary = ShardedPrimary({"a": "n1", "b": "n2", "pool:p": "n3", "r": "n1"})
    assert isinstance(primary, Partitioned)
    clock = VirtualClock(100.0)
    store = FailoverStore(primary, mode=mode, clock=clock, name="cluster", **kw)  # type: ignore[arg-type]
    return store, primary, clock


def op(tag: str, limit: Limit = LIMIT) -> BucketOp:
    return BucketOp(f"sg:{{{tag}}}:k", limit, 1)


async def test_a_failing_shard_fails_only_its_decisions() -> None:
    store, primary, clock = sharded(backoff=0.5, max_backoff=2.0)
    primary.down = {"n1"}
    with pytest.raises(StoreUnavailable, match=r"cluster \(partition n1\) unavailable"):
        await store.apply(Batch.of((op("a"),)), 0.0)
    assert [(await store.apply(Batch.of((op("b"),)), 0.0)).allowed for _ in range(12)] == [
        True
    ] * 10 + [False] * 2  # shard n2 decides exactly, as usual
    for _ in range(5):
        with pytest.raises(StoreUnavailable):
            await store.apply(Batch.of((op("a"),)), 0.0)
    assert primary.calls.count(("n1",)) == 1  # no probe before the backoff
    status = store.status()
    assert status["state"] == "degraded"
    shards = status["partitions"]
    assert isinstance(shards, dict)
    assert shards["n1"]["state"] == "degraded"
    assert "connection refused" in shards["n1"]["last_error"]
    assert shards["n2"]["state"] == "healthy" and shards["n3"] == {"state": "healthy"}
    # Probes on n1 only, backoff doubling; n2 never waits for them.
    for wait in (0.5, 1.0, 2.0):
        clock.advance(wait)
        with pytest.raises(StoreUnavailable):
            await store.apply(Batch.of((op("a"),)), 0.0)
    assert primary.calls.count(("n1",)) == 4
    primary.down = set()
    clock.advance(2.0)
    assert (await store.apply(Batch.of((op("a"),)), 0.0)).allowed  # the probe's own result
    assert store.healthy
    c = store.counters
    assert (c.degraded, c.recovered, c.probes, c.probe_failures) == (1, 1, 4, 3)
    assert c.fail_closed_refusals == 1 + 5 + 3


async def test_pool_decisions_fail_when_either_slot_is_on_the_failing_shard() -> None:
    store, primary, _ = sharded()
    primary.down = {"n3"}  # the pool's shard
    with pytest.raises(StoreUnavailable, match="partition n3"):
        await store.apply(Batch.of((op("pool:p"), op("b"))), 0.0)
    # Sequential: n2 answered nothing meanwhile, so it is blamed too (it might be the one).
    assert store.status()["partitions"]["n2"]["state"] == "degraded"  # type: ignore[index]
    store2, primary2, _ = sharded()
    primary2.down = {"n1"}  # the tenant's shard
    primary2.gate = asyncio.Event()
    pooled = asyncio.ensure_future(store2.apply(Batch.of((op("pool:p"), op("a"))), 0.0))
    await asyncio.sleep(0)
    assert (await store2.apply(Batch.of((op("pool:p"),)), 0.0)).allowed  # n3 answers meanwhile
    primary2.gate.set()
    with pytest.raises(StoreUnavailable, match="partition n1"):
        await pooled
    shards = store2.status()["partitions"]
    assert isinstance(shards, dict)
    assert [shards[n]["state"] for n in ("n1", "n2", "n3")] == ["degraded", "healthy", "healthy"]
    assert (await store2.apply(Batch.of((op("pool:p"), op("b"))), 0.0)).allowed
    with pytest.raises(StoreUnavailable):
        await store2.apply(Batch.of((op("pool:p"), op("a"))), 0.0)


async def test_local_mode_only_for_the_failing_shard() -> None:
    store, primary, _ = sharded("local", replicas=2)
    for _ in range(10):
        await store.apply(Batch.of((op("a"),)), 0.0)  # n1's bucket empty on the primary
        await store.apply(Batch.of((op("b"),)), 0.0)
    primary.down = {"n1"}
    got_a = [(await store.apply(Batch.of((op("a"),)), 0.0)).allowed for _ in range(7)]
    assert got_a == [True] * 5 + [False] * 2  # a fresh local bucket: burst 10 / 2
    assert not (await store.apply(Batch.of((op("b"),)), 0.0)).allowed  # still the primary's
    assert store.counters.local_decisions == 7


async def test_a_promoted_replica_takes_the_slots_under_a_new_name() -> None:
    store, primary, clock = sharded(backoff=0.5, max_backoff=5.0)
    primary.down = {"n1"}
    with pytest.raises(StoreUnavailable):
        await store.apply(Batch.of((op("a"),)), 0.0)
    clock.advance(0.6)
    with pytest.raises(StoreUnavailable):
        await store.apply(Batch.of((op("a"),)), 0.0)  # the probe fails: next one in 1 s
    refreshes = primary.refreshes
    clock.advance(0.6)
    with pytest.raises(StoreUnavailable):
        await store.apply(Batch.of((op("a"),)), 0.0)  # no probe yet, but the map is re-read
    assert primary.refreshes == refreshes + 1
    # The failover: the slot map now names n4 for n1's slots; n1 is gone.
    primary.owners = {"a": "n4", "b": "n2", "pool:p": "n3", "r": "n4"}
    assert (await store.apply(Batch.of((op("a"),)), 0.0)).allowed  # straight to n4
    assert store.healthy and "n1" not in store.status()["partitions"]  # type: ignore[operator]
    assert (store.counters.degraded, store.counters.recovered) == (1, 1)


async def test_settle_and_values_follow_their_shard() -> None:
    store, primary, clock = sharded("fail_closed")
    tokens = BucketOp("sg:{b}:tokens", Limit(Algorithm.GCRA, 0.001, 1000.0), 400)
    res = Reservation("{b}r1", 400, (0,), (), 60)
    assert (await store.apply(Batch.of((tokens,), 0.0, res), 0.0)).allowed
    await store.put_value("sg:{b}:scale:x", "v", 60.0, 0.0)
    primary.down = {"n1"}
    with pytest.raises(StoreUnavailable, match="partition n1"):
        await store.get_value("sg:{a}:scale:x", 0.0)
    assert (await store.settle("{b}r1", 100, 0.0)).status is SettleStatus.APPLIED  # n2
    assert await store.get_value("sg:{b}:scale:x", 0.0) == "v"
    with pytest.raises(StoreUnavailable, match="partition n1"):
        await store.list_values("sg:", 0.0)  # a listing needs every shard
    with pytest.raises(StoreUnavailable, match="settlement not applied"):
        await store.settle("{a}r2", 1, 0.0)
    assert store.counters.value_refusals == 2 and store.counters.settles_dropped == 1
    primary.down = set()
    clock.advance(0.5)
    assert await store.list_values("sg:{b}:", 0.0) == {"sg:{b}:scale:x": "v"}  # the probe
    assert store.healthy


# -- a real cluster ------------------------------------------------------------------------------

TIMEOUT = 0.05
SLACK = 0.45  # scheduling slack on a loaded 2-core machine


@dataclass
class Load:
    """Concurrent callers deciding on one batch until stopped; every call is recorded."""

    store: FailoverStore
    batch: Batch
    tasks: int = 6
    calls: list[tuple[float, float, str]] = field(default_factory=list)
    _stop: bool = False
    _running: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._running = [asyncio.ensure_future(self._caller()) for _ in range(self.tasks)]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._running)
        self._running = []

    async def _caller(self) -> None:
        while not self._stop:
            t = time.monotonic()
            try:
                result = await self.store.apply(self.batch, 0.0)
                outcome = "allowed" if result.allowed else "refused"
            except StoreUnavailable:
                outcome = "unavailable"
            self.calls.append((t, time.monotonic() - t, outcome))
            await asyncio.sleep(0.003)

    def between(self, start: float, end: float) -> list[str]:
        return [o for t, lat, o in self.calls if t >= start and t + lat <= end]

    def outcomes(self) -> list[str]:
        return [o for _, _, o in self.calls]

    @property
    def elapsed(self) -> float:
        return self.calls[-1][0] + self.calls[-1][1] - self.calls[0][0]

    @property
    def max_latency(self) -> float:
        return max(lat for _, lat, _ in self.calls)


class Transitions(logging.Handler):
    """When (monotonic) each shard changed state: ``(time, partition, to)``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "sg_event", None) == "store_transition":
            self.seen.append((time.monotonic(), record.sg_partition, record.sg_to))  # type: ignore[attr-defined]


def tenants_on_three_masters(cluster: RedisClusterProcesses) -> dict[int, str]:
    """``master port -> a tenant`` whose slot that master serves, for each master."""
    masters = {cluster.master_for_slot(s).port for s in (0, 8000, 16383)}
    found: dict[int, str] = {}
    for i in range(10_000):
        name = f"pf{i}"
        port = cluster.master_for_slot(slot_of(f"sg:{{{name}}}:x")).port
        if port in masters:
            found.setdefault(port, name)
        if len(found) == len(masters):
            return found
    raise AssertionError("no tenants found")


def bucket(tenant: str, limit: Limit) -> Batch:
    return Batch.of((BucketOp(f"sg:{{{tenant}}}:{uuid.uuid4().hex}", limit, 1),))


async def assert_exact(store: FailoverStore, tenant: str) -> None:
    """A fresh bucket of burst 20 (refill negligible) admits exactly 20 of 30 calls: Redis'
    answer (the local fallback with replicas=2 would admit 10)."""
    batch = bucket(tenant, Limit(Algorithm.GCRA, 100.0, 20))
    got = [(await store.apply(batch, 0.0)).allowed for _ in range(30)]
    assert got == [True] * 20 + [False] * 10


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic()


def pool_on(cluster: RedisClusterProcesses, port: int) -> str:
    """A pool name whose slot the master on ``port`` serves."""
    for i in range(10_000):
        if cluster.master_for_slot(slot_of(f"sg:{{pool:pp{i}}}:x")).port == port:
            return f"pp{i}"
    raise AssertionError("no pool found")


@pytest.mark.redis
@pytest.mark.slow
async def test_paused_master_fail_closed_other_shards_stay_exact(
    redis_cluster_factory: Callable[[], RedisClusterProcesses],
) -> None:
    cluster = redis_cluster_factory()
    tenants = tenants_on_three_masters(cluster)
    victim_port = next(iter(tenants))
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    sick = tenants[victim_port]
    well = [t for p, t in tenants.items() if p != victim_port]
    primary = RedisClusterStore.from_url(cluster.url, timeout=TIMEOUT)
    await primary.ping()
    store = FailoverStore(primary, mode="fail_closed", backoff=0.1, max_backoff=0.2)
    pool_name = pool_on(cluster, next(p for p in tenants if p != victim_port))
    rate = Limit(Algorithm.GCRA, 0.1, 20)  # burst 20, 10/s
    loads = {t: Load(store, bucket(t, rate)) for t in [sick, *well]}
    try:
        for load in loads.values():
            load.start()
        await asyncio.sleep(0.3)
        paused = time.monotonic()
        victim.pause()
        await wait_for(lambda: not store.healthy, 2.0, "degraded")
        shards = store.status()["partitions"]
        assert isinstance(shards, dict)
        assert shards[victim.address]["state"] == "degraded"
        assert [v["state"] for k, v in shards.items() if k != victim.address] == ["healthy"] * 2
        # Pool decisions: the pool on a healthy shard, the tenant on the paused one, fails;
        # both on healthy shards, it is decided by Redis.
        pool = BucketOp(f"sg:{{pool:{pool_name}}}:x", Limit(Algorithm.GCRA, 1e-3, 1e6), 1)
        with pytest.raises(StoreUnavailable):
            await store.apply(Batch.of((pool, BucketOp(f"sg:{{{sick}}}:p", rate, 1))), 0.0)
        assert (
            await store.apply(Batch.of((pool, BucketOp(f"sg:{{{well[1]}}}:p", rate, 1))), 0.0)
        ).allowed
        await asyncio.sleep(max(0.0, paused + 1.0 - time.monotonic()))  # well below failover
        resumed = time.monotonic()
        victim.resume()
        recovered = await wait_for(lambda: store.healthy, 5.0, "recovery")
        await asyncio.sleep(0.3)
        for load in loads.values():
            await load.stop()
        during = loads[sick].between(paused + TIMEOUT + 0.01, resumed)
        print(
            f"\npaused {resumed - paused:.2f}s: sick shard {len(during)} calls "
            f"{ {o: during.count(o) for o in set(during)} }, healthy shards "
            + ", ".join(
                f"{len(loads[t].between(paused, resumed))} calls "
                f"({loads[t].between(paused, resumed).count('allowed')} admitted)"
                for t in well
            )
            + f"; recovered {recovered - resumed:.2f}s after SIGCONT, max latency "
            f"{max(x.max_latency for x in loads.values()) * 1000:.1f} ms"
        )
        assert len(during) > 20 and set(during) == {"unavailable"}
        for t in well:
            load = loads[t]
            assert "unavailable" not in load.outcomes()  # nothing refused for store reasons
            assert len(load.between(paused, resumed)) > 20
            # Exact: GCRA never admits more than burst + rate x elapsed.
            admitted = load.outcomes().count("allowed")
            assert admitted <= 20 + 10 * load.elapsed + 1
            assert "refused" in load.between(paused, resumed)  # the bucket binds: not open
        assert max(x.max_latency for x in loads.values()) <= TIMEOUT + SLACK
        assert set(loads[sick].between(recovered + 0.05, time.monotonic())) <= {
            "allowed",
            "refused",
        }
        c = store.counters
        assert c.degraded >= 1 and c.degraded - 1 <= c.recovered <= c.degraded
        for t in [sick, *well]:
            await assert_exact(store, t)
    finally:
        victim.resume()
        for load in loads.values():
            await load.stop()
        await store.aclose()


@pytest.mark.redis
@pytest.mark.slow
async def test_killed_master_local_mode_until_the_replica_takes_over(
    redis_cluster_factory: Callable[[], RedisClusterProcesses],
) -> None:
    cluster = redis_cluster_factory()
    tenants = tenants_on_three_masters(cluster)
    victim_port = next(iter(tenants))
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    sick = tenants[victim_port]
    well = [t for p, t in tenants.items() if p != victim_port]
    # Redis' default (yes) makes every node answer CLUSTERDOWN from the moment the dead master
    # is marked failed until its replica is promoted: then no shard could keep deciding.
    for node in cluster.nodes:
        c = node.client()
        try:
            c.config_set("cluster-require-full-coverage", "no")
        finally:
            c.close()
    # A dead node refuses connections at once: the timeout only has to outlast the event-loop
    # stalls of a loaded 2-core machine (~50-60 ms seen), which would fail every shard at once.
    primary = RedisClusterStore.from_url(cluster.url, timeout=0.25)
    await primary.ping()
    store = FailoverStore(primary, mode="local", replicas=2, backoff=0.5, max_backoff=5.0)
    transitions = Transitions()
    logging.getLogger("sluicegate.stores.failover").addHandler(transitions)
    rate = Limit(Algorithm.GCRA, 1.0, 20)  # burst 20, 1/s; locally 10, 0.5/s
    loads = {t: Load(store, bucket(t, rate)) for t in [sick, *well]}
    try:
        for load in loads.values():
            load.start()
        await asyncio.sleep(0.3)  # every bucket exhausted on Redis
        killed = time.monotonic()
        victim.kill()
        await wait_for(lambda: not store.healthy, 2.0, "degraded")
        local_at_kill = store.counters.local_decisions

        def victim_listed() -> bool:
            shards = store.status()["partitions"]
            assert isinstance(shards, dict)
            return victim.address in shards

        # Back on Redis once the slot map names the promoted replica (or a probe succeeds).
        back = await wait_for(lambda: not victim_listed(), 20.0, "the replica's promotion")
        assert store.healthy
        # The sick tenant left the local store when the victim's record was dropped (its next
        # calls went to the promoted replica, whose bucket had refilled meanwhile).
        [dropped] = [
            t for t, name, to in transitions.seen if name == victim.address and to == "healthy"
        ]
        await asyncio.sleep(0.3)
        for load in loads.values():
            await load.stop()
        gap = dropped - killed
        sick_calls = loads[sick].between(killed, dropped)
        print(
            f"\nkilled: back on Redis after {gap:.2f}s; sick shard {len(sick_calls)} calls "
            f"({sick_calls.count('allowed')} admitted: local, then the replica), healthy "
            + ", ".join(
                f"{len(loads[t].between(killed, back))} calls "
                f"({loads[t].between(killed, back).count('allowed')} admitted)"
                for t in well
            )
            + f"; local decisions {store.counters.local_decisions}, "
            f"status {store.status()['partitions']}"
        )
        assert 1.0 < gap < 20.0
        assert set(sick_calls) == {"allowed", "refused"}
        # The local bucket: a divided burst of 10 plus 0.5/s. Plus what the promoted replica
        # admits before the old record is dropped (the sick tenant's calls go to it as soon as
        # the slot map names it; its bucket refilled at 1/s during the gap, minus the writes
        # replication may have lost).
        assert sick_calls.count("allowed") <= (10 + 0.5 * gap + 1) + (1.0 * gap + 1)
        assert store.counters.local_decisions - local_at_kill >= len(sick_calls) // 2
        for t in well:
            load = loads[t]
            # On Redis all along (an exhausted shared bucket: only its rate), never local
            # (a fresh local bucket would have admitted 10 more at once).
            assert set(load.outcomes()) == {"allowed", "refused"}
            assert len(load.between(killed, back)) > 20
            assert load.outcomes().count("allowed") <= 20 + 1 * load.elapsed + 1
        assert victim.port not in cluster.roles()
        for t in [sick, *well]:
            await assert_exact(store, t)  # 20 of 30: Redis' answer, not the local 10
        c = store.counters
        assert c.degraded >= 1 and c.degraded - 1 <= c.recovered <= c.degraded
    finally:
        logging.getLogger("sluicegate.stores.failover").removeHandler(transitions)
        for load in loads.values():
            await load.stop()
        await store.aclose()
