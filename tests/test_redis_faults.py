"""Faults on real servers: Redis killed mid-load and restarted on the same port, Redis paused
(SIGSTOP) beyond the timeout, and a Redis Cluster master killed until its replica takes over.

Each test drives load through a :class:`FailoverStore` and checks that callers saw exactly the
configured failure mode, that no call took much longer than the store timeout, that the store
recovered by itself, and that decisions are exact again afterwards.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from sluicegate.errors import StoreUnavailable
from sluicegate.stores.base import Algorithm, Batch, BucketOp, Limit
from sluicegate.stores.failover import FailoverStore
from sluicegate.stores.redis import RedisStore
from sluicegate.stores.redis_cluster import RedisClusterStore, slot_of
from tests.redis_servers import RedisClusterProcesses, RedisProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

TIMEOUT = 0.05
#: Scheduling slack on a loaded 2-core machine: a call may end this much after its timeout.
#: Still far below the seconds redis-py alone would block for during a failover.
SLACK = 0.45


@pytest.fixture
def server_factory(request: pytest.FixtureRequest) -> Callable[[], RedisProcess]:
    """Fresh standalone servers this test may damage."""
    make: Callable[[], RedisProcess] = request.getfixturevalue("redis_server_factory")
    return make


@pytest.fixture
def cluster_factory(request: pytest.FixtureRequest) -> Callable[[], RedisClusterProcesses]:
    """Fresh clusters this test may damage."""
    make: Callable[[], RedisClusterProcesses] = request.getfixturevalue("redis_cluster_factory")
    return make


@dataclass
class Load:
    """Concurrent callers deciding on one bucket until stopped; every call is recorded."""

    store: FailoverStore
    batch: Batch
    tasks: int = 16
    calls: list[tuple[float, float, str]] = field(default_factory=list)  # start, latency, outcome
    _stop: bool = False
    _running: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._running = [asyncio.ensure_future(self._caller()) for _ in range(self.tasks)]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._running)

    async def _caller(self) -> None:
        while not self._stop:
            t = time.monotonic()
            try:
                outcome = (
                    "allowed" if (await self.store.apply(self.batch, 0.0)).allowed else "refused"
                )
            except StoreUnavailable:
                outcome = "unavailable"
            self.calls.append((t, time.monotonic() - t, outcome))
            await asyncio.sleep(0.002)  # a client that never yields would starve the loop

    def between(self, start: float, end: float) -> list[str]:
        """Outcomes of the calls that started and ended within ``[start, end]``."""
        return [o for t, lat, o in self.calls if t >= start and t + lat <= end]

    def ending_between(self, start: float, end: float) -> list[str]:
        """Outcomes of the calls that ended after ``start`` and started before ``end``."""
        return [o for t, lat, o in self.calls if t + lat >= start and t <= end]

    @property
    def max_latency(self) -> float:
        return max(lat for _, lat, _ in self.calls)


async def wait_healthy(store: FailoverStore, timeout: float = 10.0) -> float:
    """Keep deciding (on a scratch key) until the store has recovered; returns when."""
    probe = Batch.of(
        (BucketOp(f"sg:{{probe}}:{uuid.uuid4().hex}", Limit(Algorithm.GCRA, 1e-6, 1e9), 1),)
    )
    deadline = time.monotonic() + timeout
    while not store.healthy:
        if time.monotonic() > deadline:
            raise AssertionError(f"store did not recover: {store.status()}")
        try:
            await store.apply(probe, 0.0)
        except StoreUnavailable:
            pass
        await asyncio.sleep(0.01)
    return time.monotonic()


async def assert_exact(store: FailoverStore, prefix: str) -> None:
    """A fresh bucket of burst 20 (refill negligible) admits exactly 20 of 30 calls."""
    op = BucketOp(f"{prefix}{uuid.uuid4().hex}", Limit(Algorithm.GCRA, 100.0, 20), 1)
    got = [(await store.apply(Batch.of((op,)), 0.0)).allowed for _ in range(30)]
    assert got == [True] * 20 + [False] * 10


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open", "local"])
async def test_redis_killed_mid_load_and_restarted(
    mode: str, server_factory: Callable[[], RedisProcess]
) -> None:
    server = server_factory()
    store = FailoverStore(
        RedisStore.from_url(server.url, timeout=TIMEOUT),
        mode=mode, replicas=2, backoff=0.2, max_backoff=0.4, name="redis",
    )  # fmt: skip
    # burst 20 at 1/s: the local fallback holds 10 at 0.5/s (divided by replicas=2)
    batch = Batch.of((BucketOp(f"sg:{{kill}}:{mode}", Limit(Algorithm.GCRA, 1.0, 20), 1),))
    load = Load(store, batch)
    load.start()
    await asyncio.sleep(0.3)
    killed = time.monotonic()
    server.kill()
    await asyncio.sleep(1.0)
    restarted = time.monotonic()
    server.start()
    recovered = await wait_healthy(store)
    await asyncio.sleep(0.2)
    await load.stop()
    try:
        late = recovered - restarted
        print(f"\nkill/restart {mode}: {len(load.calls)} calls, max latency "
              f"{load.max_latency * 1000:.1f} ms, recovered {late:.2f}s after restart")  # fmt: skip
        down = load.between(killed + 0.05, restarted)
        assert len(down) > 100
        if mode == "fail_closed":
            assert set(down) == {"unavailable"}
            assert store.counters.fail_closed_refusals >= len(down)
        elif mode == "fail_open":
            assert set(down) == {"allowed"}
            assert store.counters.fail_open_admits >= len(down)
        else:
            # A fresh local bucket (the shared one was exhausted before the kill): its burst
            # of 10, plus 0.5/s over the ~1 s outage. Count every call that *ended* after the
            # kill: the calls in flight when Redis died fail over to the local store too, and
            # may take the whole local burst (counting only calls that started after the kill
            # saw 0-10 admissions depending on timing).
            outage = load.ending_between(killed, restarted)
            assert set(outage) == {"allowed", "refused"}
            assert 10 <= outage.count("allowed") <= 11
            assert store.counters.local_decisions >= len(down)
        assert load.max_latency <= TIMEOUT + SLACK, load.max_latency
        # A restart can flap once (a probe passes, the next call times out): every
        # degradation must still be followed by a recovery.
        # A loaded machine can make the store flap (a probe passes, a call times out): every
        # flap but possibly one still in progress at the end must have recovered.
        assert store.counters.degraded >= 1
        assert store.counters.degraded - 1 <= store.counters.recovered <= store.counters.degraded
        assert recovered - restarted < 1.0  # the next probe after the backoff
        # Before the kill and after recovery the shared bucket was used as usual.
        assert "allowed" in load.between(0, killed)
        assert set(load.between(recovered + 0.05, time.monotonic())) <= {"allowed", "refused"}
        await assert_exact(store, "sg:{kill}:after:")
    finally:
        await store.aclose()


async def test_redis_paused_beyond_the_timeout(
    server_factory: Callable[[], RedisProcess],
) -> None:
    server = server_factory()
    primary = RedisStore.from_url(server.url, timeout=TIMEOUT)
    store = FailoverStore(primary, mode="fail_closed", backoff=0.2, max_backoff=0.4)
    batch = Batch.of((BucketOp("sg:{pause}:k", Limit(Algorithm.GCRA, 0.001, 1e6), 1),))
    load = Load(store, batch)
    load.start()
    await asyncio.sleep(0.3)
    paused = time.monotonic()
    server.pause()
    await asyncio.sleep(0.8)  # 16 timeouts long
    resumed = time.monotonic()
    server.resume()
    recovered = await wait_healthy(store)
    await asyncio.sleep(0.2)
    await load.stop()
    try:
        print(f"\npause: {len(load.calls)} calls, max latency {load.max_latency * 1000:.1f} ms, "
              f"recovered {recovered - resumed:.2f}s after SIGCONT")  # fmt: skip
        during = load.between(paused + TIMEOUT + 0.01, resumed)
        assert len(during) > 100 and set(during) == {"unavailable"}
        assert load.max_latency <= TIMEOUT + SLACK, load.max_latency
        # A loaded machine can make the store flap (a probe passes, a call times out): every
        # flap but possibly one still in progress at the end must have recovered.
        assert store.counters.degraded >= 1
        assert store.counters.degraded - 1 <= store.counters.recovered <= store.counters.degraded
        assert recovered - resumed < 1.0
        # After the last recovery every call went to Redis again (a stall of the loaded machine
        # can time a call out after the first recovery: that flap recovers by the same rule).
        status = store.status()
        last_recovery = float(status["since"]) if status["state"] == "healthy" else math.inf
        assert set(load.between(last_recovery + 0.05, time.monotonic())) <= {"allowed"}
        assert "allowed" in load.between(recovered + 0.05, time.monotonic())
        await assert_exact(store, "sg:{pause}:after:")
    finally:
        await store.aclose()


def _tenant_on(cluster: RedisClusterProcesses, port: int) -> str:
    """A tenant name whose hash slot the master on ``port`` serves."""
    for i in range(10_000):
        name = f"f{i}"
        if cluster.master_for_slot(slot_of(f"sg:{{{name}}}:x")).port == port:
            return name
    raise AssertionError("no tenant found")


async def test_cluster_master_killed_replica_takes_over(
    cluster_factory: Callable[[], RedisClusterProcesses],
) -> None:
    cluster = cluster_factory()
    victim = cluster.master_for_slot(0)
    tenant = _tenant_on(cluster, victim.port)
    other = _tenant_on(cluster, cluster.master_for_slot(16383).port)
    assert victim.port != cluster.master_for_slot(16383).port
    primary = RedisClusterStore.from_url(cluster.url, timeout=TIMEOUT)
    await primary.ping()
    store = FailoverStore(primary, mode="fail_closed", backoff=0.1, max_backoff=0.2)
    batch = Batch.of(
        (BucketOp(f"sg:{{{tenant}}}:s:x:y:requests", Limit(Algorithm.GCRA, 1e-4, 1e9), 1),)
    )
    load = Load(store, batch, tasks=8)
    load.start()
    await asyncio.sleep(0.3)
    killed = time.monotonic()
    victim.kill()
    recovered = await wait_healthy_on(store, batch, timeout=30.0)
    gap = recovered - killed
    await asyncio.sleep(0.3)
    await load.stop()
    try:
        print(f"\ncluster failover gap: {gap:.2f}s (cluster-node-timeout 2000 ms), "
              f"max latency {load.max_latency * 1000:.1f} ms")  # fmt: skip
        assert 1.0 < gap < 15.0
        during = load.between(killed + 0.1, killed + gap - 0.1)
        assert during and set(during) == {"unavailable"}
        assert load.max_latency <= TIMEOUT + SLACK, load.max_latency
        assert set(load.between(recovered + 0.05, time.monotonic())) == {"allowed"}
        # Exact again on the promoted replica (it needs the scripts: NOSCRIPT -> reload), and
        # on the other shards.
        await assert_exact(store, f"sg:{{{tenant}}}:after:")
        await assert_exact(store, f"sg:{{{other}}}:after:")
        assert victim.port not in cluster.roles()
    finally:
        await store.aclose()


async def wait_healthy_on(store: FailoverStore, batch: Batch, timeout: float) -> float:
    """When a decision on ``batch``'s slot first succeeds again after the kill."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await store.apply(batch, 0.0)
            return time.monotonic()
        except StoreUnavailable:
            await asyncio.sleep(0.01)
    raise AssertionError(f"cluster did not recover: {store.status()}")
