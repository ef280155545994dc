"""Retry budgets (Finagle style) and per-pipeline retry caps, on every store kind."""

from __future__ import annotations

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, Reason, RequestContext
from sluicegate.headers import render_headers
from sluicegate.policy import policy_from_text
from sluicegate.stores import Store

POLICY = policy_from_text(
    """
version: 1
default_tier: t
retry_budget: {percent: 10, min_per_second: 1, ttl: 10s, max_per_trace: 3, trace_ttl: 10m}
tiers:
  t:
    agent: {requests: 1000/s, burst: 1000}
"""
)


def call(retry: int = 0, trace: str | None = None, agent: str = "a") -> RequestContext:
    return RequestContext(
        "acme", agent, workload_class="realtime", retry_attempt=retry, trace_id=trace
    )


def budget(headers: list[tuple[str, str]]) -> int:
    return int(dict(headers)["x-ratelimit-retry-budget"])


async def test_budget_is_reserve_plus_percent_of_originals(store: Store) -> None:
    engine = Engine(POLICY, store, VirtualClock(1000.0))
    first = await engine.decide(call())
    # reserve 1/s x 10 s = 10, plus 10 % of the one original call just admitted
    assert budget(render_headers(first)) == 10
    for _ in range(99):
        await engine.decide(call())
    retries = [await engine.decide(call(retry=1)) for _ in range(21)]
    assert [d.allowed for d in retries] == [True] * 20 + [False]
    assert budget(render_headers(retries[19])) == 0
    refused = retries[-1]
    assert refused.reason is Reason.RETRY_BUDGET_EXHAUSTED
    h = dict(render_headers(refused))
    assert h["x-should-retry"] == "false" and int(h["retry-after"]) >= 1
    # Originals still go (a retry budget never blocks first attempts) and refill the budget.
    for _ in range(10):
        assert (await engine.decide(call())).allowed
    assert (await engine.decide(call(retry=2))).allowed


async def test_budget_recovers_after_the_window(store: Store) -> None:
    clock = VirtualClock(1000.0)
    engine = Engine(POLICY, store, clock)
    for _ in range(10):
        assert (await engine.decide(call(retry=1, agent="b"))).allowed
    assert not (await engine.decide(call(retry=1, agent="b"))).allowed
    clock.advance(20.0)  # both windows slid out: back to the reserve
    d = await engine.decide(call(agent="b"))
    assert budget(render_headers(d)) == 10


async def test_fan_out_retries_capped_per_trace(store: Store) -> None:
    engine = Engine(POLICY, store, VirtualClock(1000.0))
    for _ in range(50):
        await engine.decide(call(agent="orchestrator"))
    got = [await engine.decide(call(retry=1, trace="t1", agent=f"sub-{i}")) for i in range(5)]
    assert [d.allowed for d in got] == [True, True, True, False, False]
    assert got[3].reason is Reason.RETRY_BUDGET_EXHAUSTED
    assert [b.name for b in got[3].refusing] == ["trace-retries"]
    # Another pipeline has its own cap; the refused retries consumed nothing anywhere.
    assert (await engine.decide(call(retry=1, trace="t2", agent="sub-0"))).allowed
    assert budget(render_headers(await engine.decide(call(agent="sub-4")))) == 10


@pytest.mark.parametrize("retry", [0, 1])
async def test_headers_keep_rate_limits_separate_from_the_budget(store: Store, retry: int) -> None:
    engine = Engine(POLICY, store, VirtualClock(1000.0))
    h = dict(render_headers(await engine.decide(call(retry=retry, trace="x"))))
    assert "retry" not in h["ratelimit-policy"] and "retry" not in h["ratelimit"]
    assert "x-ratelimit-retry-budget" in h and "x-should-retry" not in h
