"""Hypothesis properties on a virtual clock."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.algorithms import gcra
from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.policy import policy_from_text
from sluicegate.stores import MemoryStore

steps = st.lists(
    st.tuples(st.floats(0, 3, allow_nan=False), st.integers(0, 4)), min_size=1, max_size=80
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0, 7.0]),
    burst=st.integers(1, 12),
)
def test_never_more_than_burst_plus_rate_times_t(
    steps: list[tuple[float, int]], rate: float, burst: int
) -> None:
    """In any interval [a, b] a bucket admits at most burst + rate * (b - a) units."""
    interval = 1.0 / rate
    now, tat = 1000.0, 0.0
    admitted: list[tuple[float, int]] = []
    for gap, cost in steps:
        now += gap
        r = gcra(tat, now, cost, interval, burst)
        tat = r.tat
        if r.allowed and cost:
            admitted.append((now, cost))
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            span = admitted[j][0] - admitted[i][0]
            assert total <= burst + rate * span + 1e-6


POLICY = policy_from_text(
    """
version: 1
tiers:
  t:
    tenant:  {requests: 20/s, burst: 6, tokens: 1000/s, tokens_burst: 3000}
    agent:   {requests: 10/s, burst: 4}
    session: {requests: 5/s,  burst: 3, tokens: 500/s, tokens_burst: 1500}
default_tier: t
"""
)

calls = st.lists(
    st.tuples(
        st.sampled_from(["A", "B"]),  # tenant
        st.sampled_from(["a1", "a2"]),  # agent
        st.sampled_from(["s1", "s2"]),  # session
        st.integers(0, 1600),  # tokens
        st.floats(0, 0.4, allow_nan=False),  # gap
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(calls=calls)
def test_all_or_nothing_and_isolation(calls: list[tuple[str, str, str, int, float]]) -> None:
    """A refused decision changes no bucket; a bucket changes only for its own identity."""

    async def run() -> None:
        clock = VirtualClock(50.0)
        store = MemoryStore(sweep_interval=1e9)  # keep every key visible for the comparison
        engine = Engine(POLICY, store, clock)
        for tenant, agent, session, tokens, gap in calls:
            clock.advance(gap)
            before = dict(store._buckets)
            d = await engine.decide(
                RequestContext(tenant, agent, session, tokens=tokens, workload_class="realtime")
            )
            after = store._buckets
            changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
            if not d.allowed:
                assert changed == set()
            else:
                assert changed <= set(d.keys)
                for key in changed:
                    assert key.startswith(f"sg:{{{tenant}}}:")
                    assert f":{agent}" in key or ":t:" in key

    asyncio.run(run())


@settings(max_examples=150, deadline=None)
@given(
    reserve=st.integers(1, 1500),
    actuals=st.lists(st.integers(0, 6000), min_size=1, max_size=4),
    gap=st.floats(0, 5, allow_nan=False),
)
def test_settle_is_idempotent_and_never_overfills(
    reserve: int, actuals: list[int], gap: float
) -> None:
    async def run() -> None:
        clock = VirtualClock(10.0)
        store = MemoryStore()
        engine = Engine(POLICY, store, clock)
        d = await engine.decide(
            RequestContext("A", "a1", "s1", tokens=reserve, workload_class="realtime")
        )
        assert d.allowed
        clock.advance(gap)
        key = next(k for k in d.keys if k.endswith(":s:a1:s1:tokens"))
        first = await engine.settle(d.id, actuals[0])
        state_after_first = store.peek(key)
        for extra in actuals[1:]:
            again = await engine.settle(d.id, extra)
            assert again.status.name == "DUPLICATE"
            assert store.peek(key) == state_after_first
        assert first.delta == actuals[0] - reserve
        # The model: reserved at t0 from a full bucket (500 tokens/s), settled at t1.
        t0, t1, interval = 10.0, clock.now(), 1 / 500
        tat0 = t0 + reserve * interval
        delta = actuals[0] - reserve
        if delta >= 0:
            tat1 = max(tat0, t1) + delta * interval
        else:
            tat1 = max(tat0 + delta * interval, t1)
        stored = store.peek(key) or 0.0
        assert max(0.0, stored - t1) == pytest.approx(max(0.0, tat1 - t1), abs=1e-9)
        # Never above full: a zero-cost probe sees at most the burst available.
        probe = await engine.decide(
            RequestContext("A", "a1", "s1", tokens=0, workload_class="realtime")
        )
        by_name = {b.name: b for b in probe.buckets}
        assert by_name["session-tokens"].remaining <= 1500

    asyncio.run(run())
