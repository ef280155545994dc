"""Memory-store specifics: idle buckets and lapsed reservations are evicted."""

from __future__ import annotations

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.policy import policy_from_text
from sluicegate.stores import MemoryStore

POLICY = policy_from_text(
    """
version: 1
default_tier: t
settle_ttl: 30s
tiers:
  t:
    agent:   {requests: 10/s, tokens: 1000/s}
    session: {requests: 1/s, burst: 5, tokens: 100/s}
"""
)


async def test_idle_buckets_and_reservations_are_evicted() -> None:
    clock = VirtualClock(0.0)
    store = MemoryStore(sweep_interval=1.0, sweep_batch=64)
    engine = Engine(POLICY, store, clock)
    for i in range(2000):
        d = await engine.decide(RequestContext("t", f"a{i % 250}", f"s{i}", tokens=50))
        assert d.allowed
    assert len(store) >= 2000 * 2
    assert store.reservation_count == 2000
    # Everything refills within 10 s and reservations lapse after 30 s; a trickle of traffic
    # from one session drives the incremental sweep.
    for _ in range(200):
        clock.advance(0.25)
        await engine.decide(RequestContext("t", "live", "live", tokens=1))
    assert len(store) <= 4  # only the live agent's and session's buckets
    assert store.reservation_count <= 130  # the live session's reservations of the last 30 s


async def test_a_refreshed_bucket_survives_the_sweep() -> None:
    clock = VirtualClock(0.0)
    store = MemoryStore(sweep_interval=0.0, sweep_batch=1)
    engine = Engine(POLICY, store, clock)
    ctx = RequestContext("t", "a", "s", workload_class="realtime")
    for _ in range(5):
        assert (await engine.decide(ctx)).allowed
    assert not (await engine.decide(ctx)).allowed  # the sweep never forgets a live bucket
