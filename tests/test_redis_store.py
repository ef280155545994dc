"""The store contract on memory, Redis and Redis Cluster (same test bodies for all three), the
Lua-vs-Python cross-check, the cluster's two-phase pool decisions, micro-batching, key expiry
and store selection by URL.

Redis stores here run on the caller's clock (``use_caller_clock``), so every store sees exactly
the same ``now`` and results must be identical to the last bit.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator

import pytest

from sluicegate.errors import ConfigurationError, StoreUnavailable
from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    BucketOp,
    Limit,
    Reservation,
    SettleStatus,
    Store,
)
from sluicegate.stores.failover import FailoverStore
from sluicegate.stores.memory import MemoryStore
from sluicegate.stores.redis import RedisStore
from sluicegate.stores.redis_cluster import RedisClusterStore, slot_of
from sluicegate.stores.url import open_store, parse_store_url
from tests.redis_servers import (
    TEST_TTL_SLACK,
    RedisClusterProcesses,
    RedisProcess,
    free_port,
    make_test_store,
)

pytestmark = [pytest.mark.redis, pytest.mark.asyncio(loop_scope="session")]

T0 = 1000.0


@pytest.fixture
def server(request: pytest.FixtureRequest) -> RedisProcess:
    """The session's standalone server."""
    result: RedisProcess = request.getfixturevalue("redis_server")
    return result


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> RedisClusterProcesses:
    """The session's 6-node cluster."""
    result: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
    return result


def gcra(per_second: float, burst: float) -> Limit:
    return Limit(Algorithm.GCRA, 1.0 / per_second, burst)


async def remaining(store: Store, key: str, limit: Limit, now: float) -> int:
    """Units left in a bucket, read with a zero-cost probe (which writes nothing)."""
    return (await store.apply(Batch.of((BucketOp(key, limit, 0.0),)), now)).remaining[0]


# -- contract ------------------------------------------------------------------------------------


async def test_all_or_nothing_across_buckets(store: Store) -> None:
    tenant = BucketOp("sg:{t}:t:requests", gcra(100, 10), 1)
    agent = BucketOp("sg:{t}:a:x:requests", gcra(100, 5), 1)
    session = BucketOp("sg:{t}:s:x:s:requests", gcra(1, 2), 1)
    batch = Batch.of((tenant, agent, session))
    assert [(await store.apply(batch, T0)).allowed for _ in range(3)] == [True, True, False]
    refused = await store.apply(batch, T0)
    assert not refused.allowed and refused.delay == 0.0
    assert [b.allowed for b in refused.buckets] == [True, True, False]
    # Refused decisions consumed nothing anywhere: 2 admitted in total.
    assert await remaining(store, tenant.key, tenant.limit, T0) == 8
    assert await remaining(store, agent.key, agent.limit, T0) == 3
    # A refusal by the first bucket leaves the later ones untouched too.
    tight_tenant = BucketOp("sg:{t}:t2:requests", gcra(1, 1), 1)
    free_agent = BucketOp("sg:{t}:a2:requests", gcra(1, 9), 1)
    assert (await store.apply(Batch.of((tight_tenant, free_agent)), T0)).allowed
    assert not (await store.apply(Batch.of((tight_tenant, free_agent)), T0)).allowed
    assert await remaining(store, free_agent.key, free_agent.limit, T0) == 8


async def test_gcra_burst_then_steady_rate_is_exact(store: Store) -> None:
    op = BucketOp("sg:{t}:s:x:rate", gcra(10, 5), 1)
    admitted_at: list[int] = []
    for step in range(200):  # 2 s of virtual time in 10 ms steps, 6 attempts each
        now = T0 + step * 0.01
        for _ in range(6):
            if (await store.apply(Batch.of((op,)), now)).allowed:
                admitted_at.append(step)
    # The burst at once, then exactly one every 100 ms.
    assert admitted_at == [0] * 5 + list(range(10, 200, 10))
    r = await store.apply(Batch.of((op,)), T0 + 1.995)
    assert not r.allowed and r.retry_after[0] == pytest.approx(0.005, abs=1e-6)


async def test_deferred_admission_reserves_the_slot(store: Store) -> None:
    op = BucketOp("sg:{t}:a:x:defer", gcra(10, 2), 1)
    delays = [(await store.apply(Batch.of((op,), max_delay=0.25), T0)) for _ in range(5)]
    assert [d.allowed for d in delays] == [True, True, True, True, False]
    assert [d.delay for d in delays[:4]] == pytest.approx([0.0, 0.0, 0.1, 0.2], abs=1e-6)
    assert delays[4].retry_after[0] == pytest.approx(0.3, abs=1e-6)
    # The deferred slots are reserved: the next call fits without waiting only at T0 + 0.3.
    assert not (await store.apply(Batch.of((op,)), T0 + 0.29)).allowed
    assert (await store.apply(Batch.of((op,)), T0 + 0.3)).allowed


async def test_settle_spans_every_token_bucket_and_releases_slots(store: Store) -> None:
    tokens_t = BucketOp("sg:{t}:t:tokens", gcra(1000, 10_000), 4000)
    tokens_s = BucketOp("sg:{t}:s:x:s:tokens", gcra(100, 5000), 4000)
    slots = BucketOp("sg:{t}:s:x:s:concurrency", Limit(Algorithm.CONCURRENCY, 30.0, 1), 1)
    res = Reservation("multi", 4000, (0, 1), (2,), 60)
    assert (await store.apply(Batch.of((tokens_t, tokens_s, slots), 0.0, res), T0)).allowed
    assert not (await store.apply(Batch.of((slots,)), T0)).allowed
    settled = await store.settle("multi", 1500, T0)
    assert settled.status is SettleStatus.APPLIED and settled.delta == -2500
    assert await remaining(store, tokens_t.key, tokens_t.limit, T0) == 10_000 - 1500
    assert await remaining(store, tokens_s.key, tokens_s.limit, T0) == 5000 - 1500
    assert (await store.apply(Batch.of((slots,)), T0)).allowed  # the slot was released
    dup = await store.settle("multi", 1500, T0)
    assert dup.status is SettleStatus.DUPLICATE and dup.delta == 0.0
    assert await remaining(store, tokens_t.key, tokens_t.limit, T0) == 10_000 - 1500


async def test_settle_debit_goes_into_debt_and_expired_reservations_are_unknown(
    store: Store,
) -> None:
    limit = gcra(10, 100)
    op = BucketOp("sg:{t}:a:x:tokens", limit, 50)
    assert (await store.apply(Batch.of((op,), 0.0, Reservation("d", 50, (0,), (), 5)), T0)).allowed
    assert (await store.settle("d", 170, T0)).delta == 120
    r = await store.apply(Batch.of((BucketOp(op.key, limit, 1),)), T0)
    assert not r.allowed and r.retry_after[0] == pytest.approx(7.1, abs=1e-6)
    assert (
        await store.apply(Batch.of((op,), 0.0, Reservation("e", 50, (0,), (), 5)), T0 + 20)
    ).allowed
    assert (await store.settle("e", 0, T0 + 25)).status is SettleStatus.UNKNOWN


async def test_concurrency_lease_expires(store: Store) -> None:
    slots = BucketOp("sg:{t}:s:x:lease", Limit(Algorithm.CONCURRENCY, 10.0, 2), 1)
    assert (await store.apply(Batch.of((slots,)), T0)).allowed
    assert (await store.apply(Batch.of((slots,)), T0 + 1)).allowed
    refused = await store.apply(Batch.of((slots,)), T0 + 2)
    assert not refused.allowed and refused.retry_after[0] == 1.0
    # Each acquisition renews the lease of the whole counter; once it lapses, all is free.
    assert not (await store.apply(Batch.of((slots,)), T0 + 10.5)).allowed
    assert (await store.apply(Batch.of((slots,)), T0 + 11.001)).allowed
    too_big = await store.apply(Batch.of((BucketOp(slots.key, slots.limit, 3),)), T0 + 11.001)
    assert math.isinf(too_big.retry_after[0])


# -- Lua vs Python -------------------------------------------------------------------------------


def _random_limit(rng: random.Random) -> Limit:
    kind = rng.random()
    if kind < 0.55:
        return Limit(Algorithm.GCRA, 10 ** rng.uniform(-3, 0.5), rng.choice([1, 2, 5, 20, 7.5]))
    if kind < 0.7:
        return Limit(
            Algorithm.SLIDING_WINDOW, rng.choice([0.5, 1.0, 3.7, 10.0]), rng.choice([1, 3, 10, 2.5])
        )
    if kind < 0.85:
        return Limit(Algorithm.FIXED_WINDOW, rng.choice([0.5, 1.0, 6.0]), rng.choice([1, 4, 10]))
    return Limit(Algorithm.CONCURRENCY, rng.choice([0.5, 2.0, 30.0]), rng.choice([1, 2, 5]))


def _random_cost(rng: random.Random, limit: Limit) -> float:
    r = rng.random()
    if limit.algorithm is Algorithm.SLIDING_WINDOW and r < 0.15:
        return -round(rng.uniform(0.01, 2.0), rng.choice([1, 6]))  # retry-budget deposits
    if r < 0.1:
        return 0.0
    if r < 0.6:
        return 1.0
    if r < 0.9:
        return round(rng.uniform(0.01, 3.0), rng.choice([0, 2, 6]))
    return limit.capacity * rng.uniform(0.8, 1.3)


@pytest.mark.parametrize("seed", [11, 22, 33])
@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_lua_mirrors_python_on_random_sequences(
    kind: str, seed: int, request: pytest.FixtureRequest
) -> None:
    """Identical random decision and settle sequences through MemoryStore (the Python
    algorithms) and the Lua scripts, on one controlled clock: identical results, bit for bit.
    Pool keys live in other hash slots, so on the cluster this also drives the two-phase path."""
    rng = random.Random(seed)
    memory = MemoryStore()
    lua: Store = await make_test_store(kind, request)
    keys = [f"sg:{{x{seed}}}:k{i}" for i in range(5)] + [
        f"sg:{{pool:p{seed}}}:k{i}" for i in range(2)
    ]
    limits = [_random_limit(rng) for _ in keys]
    now = rng.uniform(1e3, 6e7)  # production clocks sit near 5.5e7 (TIME - EPOCH)
    reservations: list[tuple[str, float]] = []
    try:
        for step in range(300):
            if reservations and rng.random() < 0.2:
                rid, reserved = rng.choice(reservations)
                actual = rng.choice([0.0, reserved, reserved * rng.uniform(0, 2), 1.0])
                a = await memory.settle(rid, actual, now)
                b = await lua.settle(rid, actual, now)
                assert a == b, (step, "settle", rid, actual, a, b)
            else:
                picks = rng.sample(range(len(keys)), rng.randint(1, 4))
                ops = [BucketOp(keys[i], limits[i], _random_cost(rng, limits[i])) for i in picks]
                res = None
                if rng.random() < 0.35:
                    token_ops = tuple(
                        j for j, op in enumerate(ops)
                        if op.limit.algorithm is not Algorithm.CONCURRENCY and rng.random() < 0.6
                    )  # fmt: skip
                    conc_ops = tuple(
                        j for j, op in enumerate(ops) if op.limit.algorithm is Algorithm.CONCURRENCY
                    )
                    reserved = rng.choice([0.0, 1.0, rng.uniform(0, 50)])
                    res = Reservation(
                        f"r{seed}-{step}", reserved, token_ops, conc_ops, rng.choice([1.0, 60.0])
                    )
                    reservations.append((res.id, reserved))
                batch = Batch.of(ops, rng.choice([0.0, 0.0, 0.0, 0.05, 0.5, 5.0]), res)
                a2 = await memory.apply(batch, now)
                b2 = await lua.apply(batch, now)
                assert a2 == b2, (step, batch, a2, b2)
            now += rng.choice(
                [0.0, 0.0, 1e-6, rng.uniform(0, 0.01), rng.uniform(0, 0.5), rng.uniform(0, 5)]
            )
    finally:
        await lua.aclose()


# -- Redis Cluster: decisions across slots --------------------------------------------------------


@pytest.fixture
async def cluster_store(request: pytest.FixtureRequest) -> AsyncIterator[RedisClusterStore]:
    s: RedisClusterStore = await make_test_store("cluster", request)
    yield s
    await s.aclose()


POOL = BucketOp("sg:{pool:openai}:requests", Limit(Algorithm.GCRA, 1.0, 50.0), 1)


def tenant_op(name: str, burst: float) -> BucketOp:
    return BucketOp(f"sg:{{{name}}}:t:requests", Limit(Algorithm.GCRA, 1.0, burst), 1)


async def test_pool_keys_live_in_their_own_slot() -> None:
    assert slot_of(POOL.key) != slot_of(tenant_op("acme", 1).key)
    assert slot_of("sg:{acme}:t:requests") == slot_of("sg:{acme}:s:x:y:tokens")


async def test_tenant_refusals_leak_nothing_from_the_pool(cluster_store: RedisClusterStore) -> None:
    """5 tenants x burst 8 = 40 < pool 50. 200 concurrent decisions: every tenant refusal came
    after the pool phase consumed, and was compensated, so exactly 40 are admitted and exactly
    10 units are left in the pool."""
    tenants = [tenant_op(f"t{i}", 8) for i in range(5)]
    batches = [Batch.of((tenants[i % 5], POOL)) for i in range(200)]
    results = await asyncio.gather(*(cluster_store.apply(b, T0) for b in batches))
    admitted = [b for b, r in zip(batches, results, strict=True) if r.allowed]
    assert len(admitted) == 40
    for t in tenants:
        assert sum(1 for b in admitted if b.keys[0] == t.key) == 8
    assert await remaining(cluster_store, POOL.key, POOL.limit, T0) == 10
    assert cluster_store.stats["compensations"] >= 1
    assert cluster_store.stats["compensation_failures"] == 0


async def test_pool_never_over_admits(cluster_store: RedisClusterStore) -> None:
    """5 tenants x burst 20 = 100 > pool 50: at most 50 admitted under contention; a phantom
    consumption may refuse a concurrent decision, but nothing leaks: sequential decisions
    afterwards top the total up to exactly 50."""
    tenants = [tenant_op(f"u{i}", 20) for i in range(5)]
    batches = [Batch.of((tenants[i % 5], POOL)) for i in range(200)]
    results = await asyncio.gather(*(cluster_store.apply(b, T0) for b in batches))
    total = sum(r.allowed for r in results)
    assert total <= 50
    for i in range(200):
        total += (await cluster_store.apply(Batch.of((tenants[i % 5], POOL)), T0)).allowed
    assert total == 50
    assert await remaining(cluster_store, POOL.key, POOL.limit, T0) == 0


async def test_pool_refusal_reports_every_bucket(cluster_store: RedisClusterStore) -> None:
    memory = MemoryStore()
    small_pool = BucketOp("sg:{pool:tiny}:requests", Limit(Algorithm.GCRA, 1.0, 1.0), 1)
    t = tenant_op("v", 5)
    for _ in range(3):
        batch = Batch.of((t, small_pool))
        assert await cluster_store.apply(batch, T0) == await memory.apply(batch, T0)


async def test_cluster_settle_adjusts_pool_tokens_in_another_slot(
    cluster_store: RedisClusterStore,
) -> None:
    tok_t = BucketOp("sg:{w}:t:tokens", gcra(100, 10_000), 3000)
    tok_pool = BucketOp("sg:{pool:openai}:tokens", gcra(100, 50_000), 3000)
    res = Reservation("{w}1", 3000, (0, 1), (), 60)  # tagged id: the record shares w's slot
    assert (await cluster_store.apply(Batch.of((tok_t, tok_pool), 0.0, res), T0)).allowed
    assert (await cluster_store.settle("{w}1", 1000, T0)).delta == -2000
    assert await remaining(cluster_store, tok_t.key, tok_t.limit, T0) == 9000
    assert await remaining(cluster_store, tok_pool.key, tok_pool.limit, T0) == 49_000
    # An untagged id lands in some other slot: one more call writes the record; same result.
    res2 = Reservation("plain-id-2", 1000, (0, 1), (), 60)
    ops = (tok_t._replace(cost=1000), tok_pool._replace(cost=1000))
    assert (await cluster_store.apply(Batch.of(ops, 0.0, res2), T0)).allowed
    assert await remaining(cluster_store, tok_pool.key, tok_pool.limit, T0) == 48_000
    assert (await cluster_store.settle("plain-id-2", 0, T0)).delta == -1000
    assert await remaining(cluster_store, tok_pool.key, tok_pool.limit, T0) == 49_000


# -- expiry ---------------------------------------------------------------------------------------


async def _pttl(store: RedisStore | RedisClusterStore, key: str) -> int:
    return int(await store.client.pttl(key))


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_every_key_gets_the_ttl_its_state_needs(
    kind: str, request: pytest.FixtureRequest
) -> None:
    s: RedisStore | RedisClusterStore = await make_test_store(kind, request)
    slack = TEST_TTL_SLACK * 1000
    try:
        g = BucketOp("sg:{e}:g", gcra(10, 20), 5)  # tat - now = 0.5 s
        w = BucketOp("sg:{e}:w", Limit(Algorithm.SLIDING_WINDOW, 10.0, 5), 1)
        c = BucketOp("sg:{e}:c", Limit(Algorithm.CONCURRENCY, 30.0, 5), 1)
        res = Reservation("{e}r", 5, (0,), (2,), 45)
        assert (await s.apply(Batch.of((g, w, c), 0.0, res), 1003.0)).allowed
        assert 0 <= await _pttl(s, g.key) - slack <= 500
        # window index 100 covers [1000, 1010): kept until (100 + 2) * 10 = 1020 -> 17 s
        assert 16_900 <= await _pttl(s, w.key) - slack <= 17_000
        assert 29_900 <= await _pttl(s, c.key) - slack <= 30_000
        assert 44_900 <= await _pttl(s, "sg:r:{e}r") - slack <= 45_000
        # A refund that fills the bucket again deletes its key.
        await s.settle("{e}r", 0, 1003.0)
        assert await _pttl(s, g.key) == -2 and await _pttl(s, c.key) == -2
    finally:
        await s.aclose()


async def test_idle_keys_vanish_on_redis_time(server: RedisProcess) -> None:
    """Production mode (Redis TIME, no slack): a bucket's key lives until it is full again."""
    s = RedisStore.from_url(server.url, timeout=2.0)
    try:
        op = BucketOp("sg:{idle}:s:x:y:requests", Limit(Algorithm.GCRA, 0.01, 5), 5)
        assert (await s.apply(Batch.of((op,)), 0.0)).allowed
        assert 0 < await _pttl(s, op.key) <= 50
        await asyncio.sleep(0.12)
        assert await s.client.exists(op.key) == 0
        assert (await s.apply(Batch.of((op,)), 0.0)).allowed  # full again
    finally:
        await s.aclose()


# -- micro-batching -------------------------------------------------------------------------------


async def test_concurrent_decisions_share_round_trips(server: RedisProcess) -> None:
    batched = RedisStore.from_url(server.url, timeout=2.0, use_caller_clock=True)
    direct = RedisStore.from_url(server.url, timeout=2.0, use_caller_clock=True, micro_batch=False)
    try:
        await batched.client.flushdb()
        ops = [Batch.of((BucketOp(f"sg:{{mb}}:k{i % 8}", gcra(1, 40), 1),)) for i in range(400)]
        got = await asyncio.gather(*(batched.apply(b, T0) for b in ops))
        stats = batched.stats
        assert stats["calls"] == 400 and stats["round_trips"] <= 40
        assert sum(r.allowed for r in got) == 8 * 40
        await batched.client.flushdb()
        again = await asyncio.gather(*(direct.apply(b, T0) for b in ops))
        assert sum(r.allowed for r in again) == 8 * 40
        assert direct.stats["round_trips"] == 400
    finally:
        await batched.aclose()
        await direct.aclose()


async def test_script_is_reloaded_after_script_flush(server: RedisProcess) -> None:
    for micro_batch in (True, False):
        s = RedisStore.from_url(server.url, timeout=2.0, micro_batch=micro_batch)
        try:
            await s.client.script_flush()
            op = BucketOp(f"sg:{{ns}}:{micro_batch}", gcra(1, 2), 1)
            assert (await s.apply(Batch.of((op,)), 0.0)).allowed
        finally:
            await s.aclose()


# -- store selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "unsupported store URL 'ftp://x'"),
        ("redis://", "no host"),
        ("redis://h:99999/0", "bad port"),
        ("redis://h:6379/abc", "the path must be a database number"),
        ("redis+cluster://h", "expected host:port"),
        ("redis+cluster://h:1/3", "a cluster has only database 0"),
    ],
)
async def test_bad_store_urls_give_one_clear_line(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        await open_store(url)
    assert message in str(info.value) and "\n" not in str(info.value)


async def test_store_url_parsing_hides_credentials() -> None:
    assert parse_store_url("memory").kind == "memory"
    spec = parse_store_url("redis://:s3cret@h:1/2")
    assert spec.kind == "redis" and "s3cret" not in spec.display
    assert parse_store_url("redis+cluster://a:1,b:2").kind == "cluster"


async def test_unknown_options_and_modes_are_rejected(server: RedisProcess) -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        await open_store(server.url, colour="blue")
    with pytest.raises(ConfigurationError, match="unknown failure_mode 'maybe'"):
        await open_store(server.url, failure_mode="maybe")


async def test_unreachable_servers_give_one_clear_line() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailable) as info:
        await open_store(f"redis://127.0.0.1:{port}/0")
    assert str(info.value) == f"cannot reach redis at 127.0.0.1:{port}: connection refused"
    with pytest.raises(StoreUnavailable) as cinfo:
        await open_store(f"redis+cluster://127.0.0.1:{port}")
    text = str(cinfo.value)
    assert text.startswith(f"cannot reach redis at cluster 127.0.0.1:{port}") and "\n" not in text


async def test_open_store_returns_working_stores(
    server: RedisProcess, cluster: RedisClusterProcesses
) -> None:
    memory = await open_store("memory")
    assert isinstance(memory, MemoryStore)
    for url in (server.url, cluster.url):
        s = await open_store(url, failure_mode="fail_open", timeout=2.0)
        try:
            assert isinstance(s, FailoverStore)
            op = BucketOp(f"sg:{{open}}:{random.random()}", gcra(1, 1), 1)
            got: list[BatchResult] = [await s.apply(Batch.of((op,)), 0.0) for _ in range(2)]
            assert [r.allowed for r in got] == [True, False]
        finally:
            await s.aclose()


async def test_abandoned_multi_slot_decisions_are_refunded(request: pytest.FixtureRequest) -> None:
    """A caller that times out mid-way through a two-phase decision does not leave its
    consumption behind: the phases finish in the background and an admission nobody waits for
    is refunded, so the buckets hold exactly what the answered admissions consumed."""
    s: RedisClusterStore = await make_test_store("cluster", request, timeout=0.0003)
    probes = RedisClusterStore.from_url(cluster_url(request), use_caller_clock=True, timeout=5.0)
    tenant = tenant_op("abandon", 1000)
    pool = BucketOp("sg:{pool:abandon}:requests", Limit(Algorithm.GCRA, 1.0, 1000.0), 1)
    answered = 0
    try:
        for _ in range(60):
            try:
                answered += (await s.apply(Batch.of((tenant, pool)), T0)).allowed
            except StoreUnavailable:
                pass
        for _ in range(100):  # let the background phases finish
            if not s._background:
                break
            await asyncio.sleep(0.02)
        assert s.stats["abandoned_refunds"] >= 1, s.stats
        assert await remaining(probes, pool.key, pool.limit, T0) == 1000 - answered
        assert await remaining(probes, tenant.key, tenant.limit, T0) == 1000 - answered
    finally:
        await s.aclose()
        await probes.aclose()


def cluster_url(request: pytest.FixtureRequest) -> str:
    cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
    return cluster.url
