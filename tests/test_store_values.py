"""Shared values (``put_value`` / ``get_value`` / ``list_values``) on every store: memory, Redis
and Redis Cluster through the ``store`` fixture (real servers), and FailoverStore in each mode.

Memory expires values on the caller's clock (``now``); Redis on its own clock, so those tests
use a short real TTL and poll for the expiry with a generous bound. Nothing here asserts speed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.errors import StoreProtocolError, StoreUnavailable
from sluicegate.stores import Algorithm, Batch, BucketOp, Limit, Store
from sluicegate.stores.base import BatchResult, SettleResult
from sluicegate.stores.failover import FailoverStore, StoreState
from sluicegate.stores.memory import MemoryStore
from sluicegate.stores.redis import RedisStore
from sluicegate.stores.redis_scripts import glob_escape, ttl_ms
from tests.redis_servers import RedisProcess

T0 = 1000.0
KEY = "sg:{acme}:scale:planner"
EVENT = '{"tenant": "acme", "agent": "planner", "instances": 40, "window": 120}'


async def wait_gone(store: Store, key: str, *, within: float = 10.0) -> bool:
    """Poll until ``key`` reads as missing; False if it is still there after ``within`` s (a
    bound for a stalled machine, not a speed expectation)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await store.get_value(key, T0) is None:
            return True
        await asyncio.sleep(0.05)
    return False


# -- every store ----------------------------------------------------------------------------------


async def test_round_trip_and_missing(store: Store) -> None:
    assert await store.get_value(KEY, T0) is None
    await store.put_value(KEY, EVENT, 60.0, T0)
    assert await store.get_value(KEY, T0) == EVENT
    assert await store.get_value("sg:{acme}:scale:nobody", T0) is None
    assert await store.get_value("sg:{other}:scale:planner", T0) is None


async def test_overwrite_replaces_value(store: Store) -> None:
    await store.put_value(KEY, "one", 60.0, T0)
    await store.put_value(KEY, "two", 60.0, T0)
    assert await store.get_value(KEY, T0) == "two"
    assert await store.list_values("sg:{acme}:scale:", T0) == {KEY: "two"}


async def test_expiry(store: Store) -> None:
    if isinstance(store, MemoryStore):
        await store.put_value(KEY, EVENT, 10.0, T0)
        assert await store.get_value(KEY, T0 + 9.999) == EVENT
        assert await store.list_values("sg:{acme}:", T0 + 9.999) == {KEY: EVENT}
        assert await store.list_values("sg:{acme}:", T0 + 10.0) == {}
        assert await store.get_value(KEY, T0 + 10.0) is None
        return
    # Redis: its own clock. A value with a long TTL outlives a short one put at the same time.
    keep = "sg:{acme}:scale:keeper"
    await store.put_value(keep, "stays", 60.0, T0)
    await store.put_value(KEY, EVENT, 0.2, T0)
    assert await wait_gone(store, KEY)
    assert await store.get_value(keep, T0) == "stays"
    assert await store.list_values("sg:{acme}:scale:", T0) == {keep: "stays"}


async def test_overwrite_replaces_expiry(store: Store) -> None:
    if isinstance(store, MemoryStore):
        await store.put_value(KEY, "long", 100.0, T0)
        await store.put_value(KEY, "short", 1.0, T0)
        assert await store.get_value(KEY, T0 + 0.5) == "short"
        assert await store.get_value(KEY, T0 + 1.0) is None
        await store.put_value(KEY, "short", 1.0, T0)
        await store.put_value(KEY, "long", 100.0, T0)
        assert await store.get_value(KEY, T0 + 50.0) == "long"
        return
    await store.put_value(KEY, "long", 60.0, T0)
    await store.put_value(KEY, "short", 0.2, T0)
    assert await wait_gone(store, KEY)


async def test_list_by_prefix_only_matching_keys(store: Store) -> None:
    mine = {
        "sg:{acme}:scale:planner": "p",
        "sg:{acme}:scale:coder": "c",
        "sg:{acme}:scale:coder:sub": "s",
    }
    others = {
        "sg:{acme}:scalex": "not under the prefix",
        "sg:{acme}:other:planner": "other kind",
        "sg:{beta}:scale:planner": "other tenant",
        "sg:{acm}:scale:planner": "tenant name is a prefix of ours",
        "xsg:{acme}:scale:planner": "prefix appears later in the key",
    }
    for key, value in {**mine, **others}.items():
        await store.put_value(key, value, 60.0, T0)
    # Bucket state under the same tenant tag, and a reservation record, are not values.
    op = BucketOp("sg:{acme}:t:requests", Limit(Algorithm.GCRA, 0.1, 10.0), 1)
    assert (await store.apply(Batch.of((op,)), T0)).allowed
    got = await store.list_values("sg:{acme}:scale:", T0)
    assert got == dict(sorted(mine.items()))
    assert list(got) == sorted(mine)  # key order
    assert await store.list_values("sg:{beta}:", T0) == {"sg:{beta}:scale:planner": "other tenant"}
    assert await store.list_values("sg:{nobody}:", T0) == {}
    assert await store.list_values("sg:{acme}:scale:coder", T0) == {
        "sg:{acme}:scale:coder": "c",
        "sg:{acme}:scale:coder:sub": "s",
    }


@pytest.mark.parametrize(
    ("prefix", "near_miss"),
    [
        ("sg:{g}:a*", "sg:{g}:ab"),
        ("sg:{g}:a?", "sg:{g}:ab"),
        ("sg:{g}:[ab]", "sg:{g}:a"),
        ("sg:{g}:[a-z]", "sg:{g}:q"),
        ("sg:{g}:a\\", "sg:{g}:a"),
        ("sg:{g}:a\\*", "sg:{g}:a*"),
        ("sg:{g}:]", "sg:{g}:x"),
        ("sg:{g*}:x", "sg:{ga}:x"),
        ("sg:{g}:^!", "sg:{g}:x"),
    ],
)
async def test_list_prefix_with_glob_characters_is_literal(
    store: Store, prefix: str, near_miss: str
) -> None:
    await store.put_value(prefix, "exact", 60.0, T0)
    await store.put_value(prefix + ":child", "child", 60.0, T0)
    await store.put_value(near_miss + ":child", "near miss", 60.0, T0)
    got = await store.list_values(prefix, T0)
    assert got == {prefix: "exact", prefix + ":child": "child"}


async def test_list_many_keys_across_scan_pages_without_duplicates(store: Store) -> None:
    if hasattr(store, "scan_count"):
        store.scan_count = 7  # many SCAN round trips and MGET chunks
    tenants = [f"t{i}" for i in range(12)]  # tags spread over the cluster's primaries
    expected: dict[str, str] = {}
    for n in range(240):
        key = f"sg:{{{tenants[n % len(tenants)]}}}:scale:agent{n}"
        expected[key] = f"v{n}"
        await store.put_value(key, f"v{n}", 60.0, T0)
    got = await store.list_values("sg:{", T0)
    assert got == dict(sorted(expected.items()))
    one = await store.list_values("sg:{t3}:scale:", T0)
    assert one == {k: v for k, v in sorted(expected.items()) if k.startswith("sg:{t3}:")}


async def test_large_and_unicode_values(store: Store) -> None:
    big = "x" * 1_000_000 + "end"
    text = 'planner 🚀 ünïcødé "quoted" \\ back \x00 nul\nnewline ✓ 中文'
    key = "sg:{acme}:scale:plänner-🚀"
    await store.put_value("sg:{acme}:scale:big", big, 60.0, T0)
    await store.put_value(key, text, 60.0, T0)
    await store.put_value("sg:{acme}:scale:empty", "", 60.0, T0)
    assert await store.get_value("sg:{acme}:scale:big", T0) == big
    assert await store.get_value(key, T0) == text
    assert await store.get_value("sg:{acme}:scale:empty", T0) == ""
    assert await store.list_values("sg:{acme}:scale:pl", T0) == {key: text}
    listed = await store.list_values("sg:{acme}:scale:", T0)
    assert listed == {"sg:{acme}:scale:big": big, "sg:{acme}:scale:empty": "", key: text}


@pytest.mark.parametrize("ttl", [0.0, -1.0, math.nan, math.inf, -math.inf])
async def test_bad_ttl_is_a_value_error(store: Store, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await store.put_value(KEY, EVENT, ttl, T0)
    assert await store.get_value(KEY, T0) is None


async def test_non_string_value_is_a_type_error(store: Store) -> None:
    with pytest.raises(TypeError, match="str"):
        await store.put_value(KEY, b"bytes", 60.0, T0)  # type: ignore[arg-type]
    assert await store.get_value(KEY, T0) is None


async def test_tiny_ttl_still_sets(store: Store) -> None:
    # Sub-millisecond TTLs round up to 1 ms on Redis instead of being refused.
    await store.put_value(KEY, EVENT, 1e-6, T0)
    if isinstance(store, MemoryStore):
        assert await store.get_value(KEY, T0) == EVENT
        assert await store.get_value(KEY, T0 + 1e-6) is None
    else:
        assert await wait_gone(store, KEY)


async def test_values_and_buckets_coexist(store: Store) -> None:
    op = BucketOp("sg:{acme}:a:planner:requests", Limit(Algorithm.GCRA, 1.0, 2.0), 1)
    assert (await store.apply(Batch.of((op,)), T0)).allowed
    await store.put_value(KEY, EVENT, 60.0, T0)
    assert (await store.apply(Batch.of((op,)), T0)).allowed
    assert not (await store.apply(Batch.of((op,)), T0)).allowed
    assert await store.get_value(KEY, T0) == EVENT


# -- store-specific -------------------------------------------------------------------------------


def test_glob_escape_and_ttl_ms() -> None:
    assert glob_escape("sg:{a}:x") == "sg:{a}:x"
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"
    assert ttl_ms(0.2) == 200
    assert ttl_ms(1e-9) == 1
    assert ttl_ms(120.0) == 120_000


async def test_memory_sweep_drops_expired_values() -> None:
    store = MemoryStore(sweep_interval=1.0, sweep_batch=1000)
    for n in range(500):
        store.put_value_sync(f"sg:{{t}}:scale:a{n}", "v", 5.0, T0)
    assert store.value_count == 500
    # Nothing reads them; later writes drive the incremental sweep.
    store.put_value_sync("sg:{t}:scale:late", "v", 5.0, T0 + 10.0)
    store.put_value_sync("sg:{t}:scale:later", "v", 5.0, T0 + 12.0)
    assert store.value_count <= 2
    # Decisions drive it too.
    for n in range(500):
        store.put_value_sync(f"sg:{{t}}:scale:b{n}", "v", 1.0, T0 + 20.0)
    op = BucketOp("sg:{t}:t:requests", Limit(Algorithm.GCRA, 1.0, 5.0), 1)
    store.apply_sync(Batch.of((op,)), T0 + 30.0)
    store.apply_sync(Batch.of((op,)), T0 + 32.0)
    assert store.value_count == 0
    await store.aclose()


async def test_memory_sweep_keeps_a_value_rewritten_meanwhile() -> None:
    store = MemoryStore(sweep_interval=1.0, sweep_batch=1)
    for n in range(3):
        store.put_value_sync(f"k{n}", "old", 1.0, T0)
    store.put_value_sync("k0", "old", 1.0, T0 + 5.0)  # starts a pass (budget 1)
    store.put_value_sync("k1", "new", 100.0, T0 + 5.0)  # rewritten after the snapshot
    for _ in range(5):
        store.put_value_sync("k2", "new", 100.0, T0 + 5.0)
    assert store.get_value_sync("k1", T0 + 50.0) == "new"


async def test_redis_get_of_a_non_string_key_is_a_protocol_error(
    redis_server: RedisProcess,
) -> None:
    store = RedisStore.from_url(redis_server.url, timeout=5.0)
    try:
        await store.client.hset("sg:{wrongtype}:scale:hash", "f", "v")
        with pytest.raises(StoreProtocolError, match="refused GET sg:\\{wrongtype\\}:scale:hash"):
            await store.get_value("sg:{wrongtype}:scale:hash", T0)
        # A listing skips what is not a string value.
        await store.put_value("sg:{wrongtype}:scale:ok", "v", 60.0, T0)
        assert await store.list_values("sg:{wrongtype}:scale:", T0) == {
            "sg:{wrongtype}:scale:ok": "v"
        }
    finally:
        await store.client.delete("sg:{wrongtype}:scale:hash", "sg:{wrongtype}:scale:ok")
        await store.aclose()


async def test_redis_ttl_is_set_in_milliseconds(redis_server: RedisProcess) -> None:
    store = RedisStore.from_url(redis_server.url, timeout=5.0)
    try:
        await store.put_value("sg:{pttl}:scale:ttl", "v", 120.0, T0)
        pttl = await store.client.pttl("sg:{pttl}:scale:ttl")
        assert 0 < pttl <= 120_000
    finally:
        await store.client.delete("sg:{pttl}:scale:ttl")
        await store.aclose()


async def test_redis_down_raises_store_unavailable(
    redis_server_factory: Callable[[], RedisProcess],
) -> None:
    server = redis_server_factory()
    store = RedisStore.from_url(server.url, timeout=1.0)
    try:
        await store.put_value(KEY, EVENT, 60.0, T0)
        server.kill()
        with pytest.raises(StoreUnavailable, match="cannot reach redis"):
            await store.put_value(KEY, EVENT, 60.0, T0)
        with pytest.raises(StoreUnavailable, match="cannot reach redis"):
            await store.get_value(KEY, T0)
        with pytest.raises(StoreUnavailable, match="cannot reach redis"):
            await store.list_values("sg:{acme}:", T0)
        server.start()
        assert await store.get_value(KEY, T0) is None  # restarted empty
    finally:
        await store.aclose()


# -- FailoverStore --------------------------------------------------------------------------------


class ScriptedPrimary:
    """A MemoryStore that fails while ``down`` is set (as in test_redis_failover.py)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down: Exception | None = None
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down is not None:
            raise self.down

    async def apply(self, batch: Batch, now: float) -> BatchResult:
        self._check()
        return await self.inner.apply(batch, now)

    async def settle(self, reservation_id: str, actual: float, now: float) -> SettleResult:
        self._check()
        return await self.inner.settle(reservation_id, actual, now)

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        self._check()
        await self.inner.put_value(key, value, ttl, now)

    async def get_value(self, key: str, now: float) -> str | None:
        self._check()
        return await self.inner.get_value(key, now)

    async def list_values(self, prefix: str, now: float) -> dict[str, str]:
        self._check()
        return await self.inner.list_values(prefix, now)

    async def aclose(self) -> None:
        await self.inner.aclose()


DOWN = StoreUnavailable("cannot reach redis at 127.0.0.1:1: connection refused")
OP = BucketOp("sg:{acme}:s:a:s:requests", Limit(Algorithm.GCRA, 1.0, 10.0), 1)


def make(mode: str) -> tuple[FailoverStore, ScriptedPrimary, VirtualClock]:
    primary = ScriptedPrimary()
    clock = VirtualClock(100.0)
    store = FailoverStore(primary, mode=mode, clock=clock, name="redis test", backoff=0.5)
    return store, primary, clock


def test_scripted_primary_is_a_store() -> None:
    assert isinstance(ScriptedPrimary(), Store)
    assert isinstance(make("local")[0], Store)


async def test_failover_healthy_delegates_to_the_primary() -> None:
    store, primary, _ = make("fail_closed")
    await store.put_value(KEY, EVENT, 60.0, T0)
    assert await primary.inner.get_value(KEY, T0) == EVENT
    assert await store.get_value(KEY, T0) == EVENT
    assert await store.list_values("sg:{acme}:", T0) == {KEY: EVENT}
    assert primary.calls == 3 and store.healthy
    assert store.counters.local_values == store.counters.value_refusals == 0


async def test_failover_fail_closed_raises_then_probes_and_recovers() -> None:
    store, primary, clock = make("fail_closed")
    await store.put_value(KEY, EVENT, 60.0, T0)
    primary.down = DOWN
    with pytest.raises(StoreUnavailable, match=r"failing closed \(get_value .*connection refused"):
        await store.get_value(KEY, T0)
    assert store.state is StoreState.DEGRADED and store.counters.degraded == 1
    calls = primary.calls
    with pytest.raises(StoreUnavailable, match="failing closed"):
        await store.put_value(KEY, "new", 60.0, T0)
    with pytest.raises(StoreUnavailable, match="failing closed"):
        await store.list_values("sg:{acme}:", T0)
    with pytest.raises(StoreUnavailable, match="failing closed"):
        await store.apply(Batch.of((OP,)), T0)  # decisions and values share one health state
    assert primary.calls == calls  # no probe before the backoff
    assert store.counters.value_refusals == 3 and store.counters.fail_closed_refusals == 1
    # After the backoff the next value call is the probe; still down: backoff doubles.
    clock.advance(0.5)
    with pytest.raises(StoreUnavailable):
        await store.get_value(KEY, T0)
    assert store.counters.probes == 1 and store.counters.probe_failures == 1
    clock.advance(0.5)
    with pytest.raises(StoreUnavailable):
        await store.get_value(KEY, T0)
    assert store.counters.probes == 1  # next probe at +1.0 s
    clock.advance(0.5)
    primary.down = None
    assert await store.get_value(KEY, T0) == EVENT  # the probe's answer is the primary's
    assert store.healthy and store.counters.recovered == 1 and store.counters.probes == 2
    assert store.counters.primary_errors == 2


@pytest.mark.parametrize("mode", ["fail_open", "local"])
async def test_failover_open_and_local_use_the_in_process_store(mode: str) -> None:
    store, primary, clock = make(mode)
    await store.put_value(KEY, "before", 60.0, T0)
    primary.down = DOWN
    # The outage starts on a write: it lands in the local store, not the primary.
    await store.put_value("sg:{acme}:scale:coder", "during", 60.0, T0)
    assert store.state is StoreState.DEGRADED
    assert await store.get_value("sg:{acme}:scale:coder", T0) == "during"
    assert await store.get_value(KEY, T0) is None  # the primary's values are out of reach
    assert await store.list_values("sg:{acme}:", T0) == {"sg:{acme}:scale:coder": "during"}
    # The local store expires by the caller's clock.
    await store.put_value("sg:{acme}:scale:brief", "x", 1.0, T0)
    assert await store.get_value("sg:{acme}:scale:brief", T0 + 1.0) is None
    assert store.counters.local_values == 6 and store.counters.value_refusals == 0
    with pytest.raises(ValueError, match="ttl"):
        await store.put_value(KEY, "x", 0.0, T0)  # still validated while degraded
    # Recovery: a value call after the backoff probes the primary.
    primary.down = None
    clock.advance(0.5)
    assert await store.get_value(KEY, T0) == "before"
    assert store.healthy and store.counters.recovered == 1
    assert await store.get_value("sg:{acme}:scale:coder", T0) is None  # local values stay local
    assert await primary.inner.list_values("sg:{acme}:", T0) == {KEY: "before"}


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open", "local"])
async def test_failover_value_outage_then_decisions_follow_the_mode(mode: str) -> None:
    store, primary, _ = make(mode)
    primary.down = DOWN
    if mode == "fail_closed":
        with pytest.raises(StoreUnavailable):
            await store.list_values("sg:{acme}:", T0)
        with pytest.raises(StoreUnavailable):
            await store.apply(Batch.of((OP,)), T0)
    else:
        assert await store.list_values("sg:{acme}:", T0) == {}
        assert (await store.apply(Batch.of((OP,)), T0)).allowed
    assert store.counters.degraded == 1 and primary.calls == 1


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open", "local"])
async def test_failover_value_protocol_errors_are_not_outages(mode: str) -> None:
    store, primary, _ = make(mode)
    primary.down = StoreProtocolError("redis refused GET k: WRONGTYPE")
    with pytest.raises(StoreProtocolError):
        await store.get_value(KEY, T0)
    assert store.healthy and store.counters.protocol_errors == 1


@pytest.mark.parametrize("ttl", [0.0, -5.0, math.nan])
async def test_failover_bad_ttl_never_reaches_the_primary(ttl: float) -> None:
    store, primary, _ = make("fail_closed")
    with pytest.raises(ValueError, match="ttl"):
        await store.put_value(KEY, EVENT, ttl, T0)
    assert primary.calls == 0 and store.healthy


@pytest.mark.parametrize("mode", ["fail_closed", "local"])
async def test_failover_on_a_real_redis_outage(
    redis_server_factory: Callable[[], RedisProcess], mode: str
) -> None:
    server = redis_server_factory()
    clock = VirtualClock(0.0)
    primary = RedisStore.from_url(server.url, timeout=1.0)
    store = FailoverStore(primary, mode=mode, clock=clock, name=f"redis {server.address}")
    try:
        await store.put_value(KEY, EVENT, 60.0, T0)
        assert await store.list_values("sg:{acme}:", T0) == {KEY: EVENT}
        server.kill()
        if mode == "fail_closed":
            with pytest.raises(StoreUnavailable, match="failing closed"):
                await store.get_value(KEY, T0)
        else:
            assert await store.get_value(KEY, T0) is None
            await store.put_value(KEY, "local", 60.0, T0)
            assert await store.get_value(KEY, T0) == "local"
        assert store.state is StoreState.DEGRADED
        server.start()
        clock.advance(0.5)
        await store.put_value(KEY, "after", 60.0, T0)  # the probe
        assert store.healthy
        assert await store.get_value(KEY, T0) == "after"
        assert await primary.client.pttl(KEY) > 0
    finally:
        await store.aclose()
