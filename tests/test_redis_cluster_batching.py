"""Micro-batching on Redis Cluster: concurrent script calls grouped by the primary that owns
their slot, one pipelined round trip per group, and what happens when the slot map is wrong
(MOVED, ASK), the scripts are gone (NOSCRIPT) or a node stops answering.

Real servers only: the session cluster for what leaves it as it was, a cluster of this module's
own for slot migrations and a paused node. Nothing here asserts on speed.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from sluicegate.errors import StoreUnavailable
from sluicegate.stores.base import Algorithm, Batch, BucketOp, Limit
from sluicegate.stores.redis_cluster import RedisClusterStore, slot_of
from tests.redis_servers import (
    TEST_TTL_SLACK,
    RedisClusterProcesses,
    make_test_store,
    require_redis,
)

pytestmark = [pytest.mark.redis]

T0 = 1000.0


def burst(n: float) -> Limit:
    """GCRA with a burst of ``n`` and a negligible refill (1 per 1e6 s)."""
    return Limit(Algorithm.GCRA, 1e6, n)


def tenants_per_master(cluster: RedisClusterProcesses, per_master: int) -> dict[int, list[str]]:
    """``port -> tenant names`` whose slots that master serves, ``per_master`` each."""
    masters = {cluster.master_for_slot(s).port for s in (0, 8000, 16383)}
    found: dict[int, list[str]] = {port: [] for port in masters}
    for i in range(10_000):
        name = f"mb{i}"
        port = cluster.master_for_slot(slot_of(f"sg:{{{name}}}:x")).port
        if port in found and len(found[port]) < per_master:
            found[port].append(name)
        if all(len(v) == per_master for v in found.values()):
            return found
    raise AssertionError("no tenants found")


@pytest.fixture
async def cstore(request: pytest.FixtureRequest) -> AsyncIterator[RedisClusterStore]:
    s: RedisClusterStore = await make_test_store("cluster", request)
    yield s
    await s.aclose()


# -- batches form, results stay exact ----------------------------------------------------------


async def test_concurrent_calls_share_round_trips_per_node(
    cstore: RedisClusterStore, request: pytest.FixtureRequest
) -> None:
    cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
    names = [n for group in tenants_per_master(cluster, 3).values() for n in group]
    ops = [BucketOp(f"sg:{{{n}}}:s:a:b:requests", burst(20), 1) for n in names]
    batches = [Batch.of((ops[i % len(ops)],)) for i in range(50 * len(ops))]
    got = await asyncio.gather(*(cstore.apply(b, T0) for b in batches))
    stats = cstore.stats
    assert stats["calls"] == len(batches)
    assert stats["round_trips"] * 4 <= stats["calls"], stats  # batches really formed
    per_op: dict[str, int] = {}
    for batch, result in zip(batches, got, strict=True):
        per_op[batch.keys[0]] = per_op.get(batch.keys[0], 0) + result.allowed
    assert per_op == {op.key: 20 for op in ops}  # exactly each burst, on every node


async def test_two_phase_pool_decisions_through_the_batcher(cstore: RedisClusterStore) -> None:
    """Pool first, tenant slot last, compensation on refusal: 5 tenants of capacity 8 over
    a pool of 30 admit exactly 30, and the refused decisions leave nothing in the tenants."""
    pool = BucketOp("sg:{pool:mb}:requests", burst(30), 1)
    tenants = [BucketOp(f"sg:{{mbp{i}}}:t:requests", burst(8), 1) for i in range(5)]
    batches = [Batch.of((tenants[i % 5], pool)) for i in range(100)]
    got = await asyncio.gather(*(cstore.apply(b, T0) for b in batches))
    assert sum(r.allowed for r in got) == 30
    probes = [await cstore.apply(Batch.of((BucketOp(t.key, t.limit, 0),)), T0) for t in tenants]
    assert sum(8 - p.buckets[0].remaining for p in probes) == 30
    assert cstore.stats["compensation_failures"] == 0
    assert cstore.stats["round_trips"] < cstore.stats["calls"]


async def test_unbatched_cluster_store_still_works(request: pytest.FixtureRequest) -> None:
    s: RedisClusterStore = await make_test_store("cluster", request, micro_batch=False)
    try:
        op = BucketOp("sg:{mbu}:k", burst(5), 1)
        got = await asyncio.gather(*(s.apply(Batch.of((op,)), T0) for _ in range(12)))
        assert sum(r.allowed for r in got) == 5
        assert s.stats["calls"] == s.stats["round_trips"] == 12
    finally:
        await s.aclose()


async def test_scripts_reloaded_on_every_node_after_script_flush(
    cstore: RedisClusterStore, request: pytest.FixtureRequest
) -> None:
    cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
    names = [n for group in tenants_per_master(cluster, 2).values() for n in group]
    ops = [BucketOp(f"sg:{{{n}}}:ns", burst(3), 1) for n in names]
    first = [await cstore.apply(Batch.of((op,)), T0) for op in ops]
    assert all(r.allowed for r in first)
    for node in cluster.nodes:  # every master (and replica) forgets the scripts
        c = node.client()
        try:
            c.script_flush()
        finally:
            c.close()
    loads = cstore.stats["script_loads"]
    got = await asyncio.gather(*(cstore.apply(Batch.of((op,)), T0) for op in ops * 4))
    # 2 more admitted per bucket (burst 3): nothing ran twice, nothing was lost.
    assert sum(r.allowed for r in got) == 2 * len(ops)
    assert cstore.stats["script_loads"] >= loads + 3  # every master needed its scripts back


# -- exactness across processes ------------------------------------------------------------------

PROCESSES = 3
TASKS = 48
DURATION = 2.0
RATE = 20.0
BURST = 40.0


async def _hammer(url: str, keys: list[str], start_at: float) -> dict[str, Any]:
    from sluicegate.stores.base import Algorithm, Batch, BucketOp, Limit
    from sluicegate.stores.redis_cluster import RedisClusterStore

    # Generous timeout: processes and six servers share two cores; a timed-out call may still
    # consume (a shortfall, never an over-admission).
    store = RedisClusterStore.from_url(url, timeout=2.0)
    limit = Limit(Algorithm.GCRA, 1.0 / RATE, BURST)
    batches = [Batch.of((BucketOp(k, limit, 1.0),)) for k in keys]
    admitted = dict.fromkeys(keys, 0)
    errors = 0
    await store.ping()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    t_start = time.time()
    end = t_start + DURATION

    async def task(k: int) -> None:
        nonlocal errors
        i = k
        while time.time() < end:
            batch = batches[i % len(batches)]
            i += 1
            try:
                ok = (await store.apply(batch, 0.0)).allowed
            except Exception:
                errors += 1
            else:
                admitted[batch.keys[0]] += ok

    await asyncio.gather(*(task(k) for k in range(TASKS)))
    t_end = time.time()
    stats = store.stats
    await store.aclose()
    return {"admitted": admitted, "errors": errors, "start": t_start, "end": t_end, **stats}


def hammer(url: str, keys: list[str], start_at: float) -> dict[str, Any]:
    """Process entry point (spawned: a fresh interpreter, its own loop and client)."""
    return asyncio.run(_hammer(url, keys, start_at))


def test_buckets_on_every_node_are_exact_across_processes(
    request: pytest.FixtureRequest,
) -> None:
    cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
    run = uuid.uuid4().hex[:8]
    names = [n for group in tenants_per_master(cluster, 2).values() for n in group]
    keys = [f"sg:{{{n}}}:s:{run}:requests" for n in names]
    start_at = time.time() + 2.0  # spawned interpreters need ~1-2 s to import
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=ctx) as pool:
        futures = [pool.submit(hammer, cluster.url, keys, start_at) for _ in range(PROCESSES)]
        results = [f.result(timeout=60) for f in futures]
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    bound = BURST + RATE * elapsed
    calls = sum(r["calls"] for r in results)
    trips = sum(r["round_trips"] for r in results)
    print(f"\ncluster batching: {calls} calls in {trips} round trips, elapsed {elapsed:.2f}s")
    assert sum(r["errors"] for r in results) == 0
    assert trips * 2 <= calls  # batched
    for key in keys:
        admitted = sum(r["admitted"][key] for r in results)
        assert admitted <= bound + 1e-6, (key, admitted, bound)
        assert admitted >= 0.9 * bound, (key, admitted, bound)  # contended, nothing lost


# -- slot migration and a paused node (a cluster of this module's own) ---------------------------


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[RedisClusterProcesses]:
    require_redis()
    cluster = RedisClusterProcesses().start()
    yield cluster
    cluster.close()


def _node_id(cluster: RedisClusterProcesses, port: int) -> str:
    node = next(n for n in cluster.nodes if n.port == port)
    c = node.client()
    try:
        return str(c.execute_command("CLUSTER", "MYID").decode())
    finally:
        c.close()


def _masters(cluster: RedisClusterProcesses) -> list[int]:
    return sorted(p for p, role in cluster.roles().items() if role == "master")


async def test_moved_and_ask_during_a_slot_migration(own_cluster: RedisClusterProcesses) -> None:
    cluster = own_cluster
    tenant = "mig"
    key = f"sg:{{{tenant}}}:s:a:b:requests"
    slot = slot_of(key)
    src = cluster.master_for_slot(slot)
    dst_port = next(p for p in _masters(cluster) if p != src.port)
    dst = next(n for n in cluster.nodes if n.port == dst_port)
    src_id, dst_id = _node_id(cluster, src.port), _node_id(cluster, dst.port)
    store = RedisClusterStore.from_url(
        cluster.url, use_caller_clock=True, ttl_slack=TEST_TTL_SLACK, timeout=2.0
    )
    old = BucketOp(key, burst(10), 1)
    new = BucketOp(f"sg:{{{tenant}}}:s:a:c:requests", burst(4), 1)  # created mid-migration
    s, d = src.client(), dst.client()
    try:
        await store.ping()
        got = await asyncio.gather(*(store.apply(Batch.of((old,)), T0) for _ in range(6)))
        assert sum(r.allowed for r in got) == 6
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        # The source still holds `old` and runs its script; `new` exists nowhere: ASK, and
        # the destination runs it behind ASKING (loading the scripts there first).
        assert (await store.apply(Batch.of((old,)), T0)).allowed
        got = await asyncio.gather(*(store.apply(Batch.of((new,)), T0) for _ in range(6)))
        assert sum(r.allowed for r in got) == 4
        assert store.stats["redirects"] >= 1
        asking = d.pipeline(transaction=False)  # the importing node answers only after ASKING
        asking.execute_command("ASKING")
        asking.exists(new.key)
        assert asking.execute()[1] == 1
        # Move the rest and hand the slot over: the source answers MOVED from now on.
        s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", old.key)
        for port in _masters(cluster):
            node = next(n for n in cluster.nodes if n.port == port)
            c = node.client()
            try:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            finally:
                c.close()
        redirects = store.stats["redirects"]
        got = await asyncio.gather(*(store.apply(Batch.of((old,)), T0) for _ in range(6)))
        # 7 of 10 were taken before the move: exactly 3 more, none twice.
        assert sum(r.allowed for r in got) == 3
        assert store.stats["redirects"] > redirects
        # The slot map now names the destination: no more redirects.
        redirects = store.stats["redirects"]
        assert not (await store.apply(Batch.of((old,)), T0)).allowed
        assert store.stats["redirects"] == redirects
        node = store.client.nodes_manager.get_node_from_slot(slot)
        assert int(node.port) == dst.port
    finally:
        s.close()
        d.close()
        await store.aclose()


async def test_a_paused_node_fails_only_its_own_calls_within_the_timeout(
    own_cluster: RedisClusterProcesses,
) -> None:
    cluster = own_cluster
    groups = tenants_per_master(cluster, 1)
    victim_port = sorted(groups)[0]
    victim = next(n for n in cluster.nodes if n.port == victim_port)
    # A timeout well above this machine's scheduling hiccups, well below a failover.
    store = RedisClusterStore.from_url(cluster.url, use_caller_clock=True, timeout=0.25)
    ops = {port: BucketOp(f"sg:{{{names[0]}}}:p", burst(1e9), 1) for port, names in groups.items()}
    try:
        await store.ping()
        for op in ops.values():  # warm: scripts loaded, connections open
            assert (await store.apply(Batch.of((op,)), T0)).allowed
        victim.pause()  # well below cluster-node-timeout: no failover
        try:
            got = await asyncio.gather(
                *(store.apply(Batch.of((op,)), T0) for op in ops.values() for _ in range(8)),
                return_exceptions=True,
            )
        finally:
            victim.resume()
        for (port, _), start in zip(ops.items(), range(0, len(got), 8), strict=True):
            chunk = got[start : start + 8]
            if port == victim_port:
                assert all(isinstance(r, StoreUnavailable) for r in chunk), chunk
                assert "no answer within 250 ms" in str(chunk[0])
                assert str(chunk[0]).startswith("cannot reach redis at cluster ")
            else:
                assert all(not isinstance(r, BaseException) and r.allowed for r in chunk), chunk
        # The node answers again; the calls that timed out may have run (the safe side).
        for _ in range(100):
            try:
                if (await store.apply(Batch.of((ops[victim_port],)), T0)).allowed:
                    break
            except StoreUnavailable:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the paused node never answered again")
    finally:
        victim.resume()
        await store.aclose()


async def test_redirects_are_bounded(own_cluster: RedisClusterProcesses) -> None:
    """A slot MIGRATING to a node that is not IMPORTING it: the source answers ASK, the target
    MOVED back, round and round. The call fails after two re-routes, having run nowhere."""
    cluster = own_cluster
    key = "sg:{loop}:s:a:b:requests"
    slot = slot_of(key)
    src = cluster.master_for_slot(slot)
    dst_port = next(p for p in _masters(cluster) if p != src.port)
    store = RedisClusterStore.from_url(cluster.url, use_caller_clock=True, timeout=2.0)
    s = src.client()
    try:
        await store.ping()
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(cluster, dst_port))
        with pytest.raises(StoreUnavailable) as info:
            await store.apply(Batch.of((BucketOp(key, burst(5), 1),)), T0)
        assert str(info.value).startswith("cannot reach redis at cluster ")
        assert "still redirected after 2 attempts (ASK" in str(info.value)
        assert store.stats["redirects"] == 2
        s.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        assert (await store.apply(Batch.of((BucketOp(key, burst(5), 1),)), T0)).allowed
    finally:
        s.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        s.close()
        await store.aclose()


async def test_batching_can_be_switched_off_through_the_store_url(
    redis_cluster: RedisClusterProcesses,
) -> None:
    """``open_store`` passes the batching options to a cluster store as to a standalone one."""
    from sluicegate.stores.url import open_store

    for micro_batch in (True, False):
        store: Any = await open_store(redis_cluster.url, micro_batch=micro_batch, timeout=2.0)
        try:
            inner = store.primary
            assert isinstance(inner, RedisClusterStore)
            assert (inner._batching is not None) is micro_batch
        finally:
            await store.aclose()
