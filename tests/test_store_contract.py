"""The store contract: every store (memory here; Redis and Redis Cluster plug into the ``store``
fixture) must pass these same tests."""

from __future__ import annotations

import math

import pytest

from sluicegate.stores import (
    Algorithm,
    Batch,
    BucketOp,
    Limit,
    Reservation,
    SettleStatus,
    Store,
)

T0 = 1000.0


def gcra_limit(per_second: float, burst: float) -> Limit:
    return Limit(Algorithm.GCRA, 1.0 / per_second, burst)


async def test_burst_then_refuse_with_exact_retry(store: Store) -> None:
    op = BucketOp("sg:{t}:s:a:s:requests", gcra_limit(10, 3), 1)
    results = [await store.apply(Batch.of((op,)), T0) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert results[2].buckets[0].remaining == 0
    assert results[3].buckets[0].retry_after == pytest.approx(0.1, abs=1e-6)
    later = await store.apply(Batch.of((op,)), T0 + 0.1)
    assert later.allowed


async def test_refusal_on_one_bucket_leaves_the_others_untouched(store: Store) -> None:
    tenant = BucketOp("sg:{t}:t:requests", gcra_limit(100, 100), 1)
    session = BucketOp("sg:{t}:s:a:s1:requests", gcra_limit(1, 1), 1)
    assert (await store.apply(Batch.of((tenant, session)), T0)).allowed
    for _ in range(5):
        r = await store.apply(Batch.of((tenant, session)), T0)
        assert not r.allowed
        assert r.buckets[0].allowed and not r.buckets[1].allowed
    # Only the first call consumed the tenant bucket: 99 left.
    probe = await store.apply(Batch.of((BucketOp(tenant.key, tenant.limit, 0),)), T0)
    assert probe.buckets[0].remaining == 99


async def test_cost_above_capacity_never_admitted(store: Store) -> None:
    op = BucketOp("sg:{t}:a:a:tokens", gcra_limit(1000, 5000), 5001)
    r = await store.apply(Batch.of((op,)), T0)
    assert not r.allowed and math.isinf(r.buckets[0].retry_after)


async def test_deferred_admission(store: Store) -> None:
    op = BucketOp("sg:{t}:a:a:requests", gcra_limit(1, 2), 1)
    for _ in range(2):
        assert (await store.apply(Batch.of((op,)), T0)).allowed
    waited = await store.apply(Batch.of((op,), max_delay=1.5), T0)
    assert waited.allowed and waited.delay == pytest.approx(1.0, abs=1e-6)
    refused = await store.apply(Batch.of((op,), max_delay=1.5), T0)
    assert not refused.allowed


async def test_settle_refund_debit_idempotent(store: Store) -> None:
    limit = gcra_limit(100, 1000)
    op = BucketOp("sg:{t}:s:a:s:tokens", limit, 800)
    res = Reservation("r1", 800, (0,), (), 60)
    assert (await store.apply(Batch.of((op,), 0.0, res), T0)).allowed
    settled = await store.settle("r1", 300, T0)
    assert settled.status is SettleStatus.APPLIED and settled.delta == -500
    assert (await store.settle("r1", 300, T0)).status is SettleStatus.DUPLICATE
    assert (await store.settle("nope", 300, T0)).status is SettleStatus.UNKNOWN
    probe = await store.apply(Batch.of((BucketOp(op.key, limit, 0),)), T0)
    assert probe.buckets[0].remaining == 700
    # Debit beyond the reservation goes into debt.
    res2 = Reservation("r2", 100, (0,), (), 60)
    assert (await store.apply(Batch.of((BucketOp(op.key, limit, 100),), 0.0, res2), T0)).allowed
    await store.settle("r2", 1100, T0)
    probe = await store.apply(Batch.of((BucketOp(op.key, limit, 1),)), T0)
    assert not probe.allowed


async def test_refund_never_overfills(store: Store) -> None:
    limit = gcra_limit(100, 1000)
    op = BucketOp("sg:{t}:s:a:s2:tokens", limit, 500)
    assert (
        await store.apply(Batch.of((op,), 0.0, Reservation("r3", 500, (0,), (), 60)), T0)
    ).allowed
    await store.settle("r3", 0, T0 + 100)  # long after: the bucket is already full again
    probe = await store.apply(Batch.of((BucketOp(op.key, limit, 1001),)), T0 + 100)
    assert not probe.allowed
    probe = await store.apply(Batch.of((BucketOp(op.key, limit, 0),)), T0 + 100)
    assert probe.buckets[0].remaining == 1000


async def test_concurrency_released_by_settle(store: Store) -> None:
    conc = BucketOp("sg:{t}:s:a:s:concurrency", Limit(Algorithm.CONCURRENCY, 300, 2), 1)
    for i in range(2):
        assert (
            await store.apply(Batch.of((conc,), 0.0, Reservation(f"c{i}", 0, (), (0,), 60)), T0)
        ).allowed
    assert not (await store.apply(Batch.of((conc,)), T0)).allowed
    await store.settle("c0", 0, T0)
    await store.settle("c0", 0, T0)  # a double release frees one slot only
    assert (await store.apply(Batch.of((conc,)), T0)).allowed
    assert not (await store.apply(Batch.of((conc,)), T0)).allowed


@pytest.mark.parametrize("algorithm", [Algorithm.SLIDING_WINDOW, Algorithm.FIXED_WINDOW])
async def test_window_algorithms(store: Store, algorithm: Algorithm) -> None:
    op = BucketOp(f"sg:{{t}}:a:a:{algorithm.value}", Limit(algorithm, 60.0, 3), 1)
    got = [(await store.apply(Batch.of((op,)), 30.0)).allowed for _ in range(4)]
    assert got == [True, True, True, False]


async def test_tenants_never_share_buckets(store: Store) -> None:
    limit = gcra_limit(1, 1)
    a = BucketOp("sg:{A}:s:a:s1:requests", limit, 1)
    b = BucketOp("sg:{B}:s:a:s1:requests", limit, 1)
    assert (await store.apply(Batch.of((a,)), T0)).allowed
    assert (await store.apply(Batch.of((b,)), T0)).allowed
    assert not (await store.apply(Batch.of((a,)), T0)).allowed
