"""Adaptive bursts on a virtual clock, on every store kind: the burst follows the caller's
sliding average demand, clamped to ``[min, max]``."""

from __future__ import annotations

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.errors import PolicyError
from sluicegate.headers import render_headers
from sluicegate.policy import policy_from_text
from sluicegate.stores import Store

ADAPTIVE = """
version: 1
default_tier: t
tiers:
  t:
    agent:
      requests: 600/min
      adaptive_burst: {window: 60s, factor: 8, min: 10, max: 60}
"""
# The same rate with the fixed burst the adaptive one starts from.
STATIC = """
version: 1
default_tier: t
tiers:
  t:
    agent: {requests: 600/min, burst: 10}
"""
CALL = RequestContext("acme", "planner", workload_class="realtime")


async def think_then_act(
    engine: Engine, clock: VirtualClock, cycles: int, calls: int
) -> tuple[list[int], list[float]]:
    """Idle 5 s, then ``calls`` calls 10 ms apart, ``cycles`` times; refused calls are dropped.
    Returns the calls admitted per burst and every burst a decision was checked against."""
    admitted: list[int] = []
    bursts: list[float] = []
    for _ in range(cycles):
        clock.advance(5.0)
        ok = 0
        for _ in range(calls):
            clock.advance(0.01)
            decision = await engine.decide(CALL)
            ok += decision.allowed
            bursts += [b for _, b in decision.bursts]
        admitted.append(ok)
    return admitted, bursts


async def test_a_think_then_act_agent_gets_its_bursts_once_its_average_is_known(
    store: Store,
) -> None:
    clock = VirtualClock(1000.0)
    engine = Engine(policy_from_text(ADAPTIVE), store, clock)
    admitted, bursts = await think_then_act(engine, clock, cycles=30, calls=30)
    assert admitted[0] < 20  # a new caller starts from min (10, plus what 0.3 s refills)
    assert admitted[-10:] == [30] * 10  # established: every burst goes through whole
    assert bursts[0] == 10 and 30 <= bursts[-1] <= 60
    # Bookkeeping only: the demand counter is not a rate limit in the headers.
    decision = await engine.decide(CALL)
    headers = dict(render_headers(decision))
    assert headers["x-ratelimit-burst"].startswith('"agent-requests";b=')
    assert "demand" not in headers["ratelimit-policy"]
    # The OpenAI-style limit is the burst this call was checked on, never below what remains.
    burst = headers["x-ratelimit-burst"].rpartition("b=")[2]
    assert headers["x-ratelimit-limit-requests"] == burst
    assert int(headers["x-ratelimit-remaining-requests"]) <= int(burst)


async def test_the_same_traffic_with_the_fixed_burst_keeps_losing_calls(store: Store) -> None:
    clock = VirtualClock(1000.0)
    engine = Engine(policy_from_text(STATIC), store, clock)
    admitted, bursts = await think_then_act(engine, clock, cycles=30, calls=30)
    assert max(admitted) < 20 and bursts == []


async def test_a_tenfold_change_does_not_inflate_the_burst_beyond_max(store: Store) -> None:
    clock = VirtualClock(1000.0)
    engine = Engine(policy_from_text(ADAPTIVE), store, clock)
    await think_then_act(engine, clock, cycles=20, calls=30)
    # Suddenly 10x: 300 calls per burst. The burst is capped at max (60); in the 3 s of a
    # burst the rate (10/s) refills about 30 more, so no burst admits much above 90.
    admitted, bursts = await think_then_act(engine, clock, cycles=20, calls=300)
    assert max(bursts) == 60
    assert max(admitted) <= 60 + 31


async def test_demand_is_shared_by_engines_on_one_store(store: Store) -> None:
    """Two replicas on one store: the demand counter is in the store, so a replica that has
    not served the caller yet sizes its burst from what the other admitted (after one call)."""
    clock = VirtualClock(1000.0)
    policy = policy_from_text(ADAPTIVE)
    first, second = Engine(policy, store, clock), Engine(policy, store, clock)
    await think_then_act(first, clock, cycles=20, calls=30)
    assert (await second.decide(CALL)).bursts == (("agent-requests", 10.0),)
    clock.advance(0.01)
    (_, burst), *_ = (await second.decide(CALL)).bursts
    assert burst > 30


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (
            "requests: 600/min\n      adaptive_burst: {window: 30s, min: 1, max: 9}",
            "adaptive_burst.window: must be greater than or equal to 60",
        ),
        (
            "requests: 600/min\n      burst: 5\n      adaptive_burst: {min: 1, max: 9}",
            "burst and adaptive_burst exclude each other",
        ),
        (
            "requests: {rate: 600/min, adaptive_burst: {min: 10, max: 9}}",
            "max (9) is below min (10)",
        ),
        (
            "requests: {rate: 600/min, algorithm: fixed_window, adaptive_burst: {min: 1, max: 9}}",
            "adaptive_burst needs the gcra algorithm",
        ),
        ("tokens: 1M/min\n      adaptive_burst: {min: 1, max: 9}", "needs a requests limit"),
    ],
)
def test_bad_adaptive_bursts_are_rejected_with_their_location(limits: str, message: str) -> None:
    text = f"version: 1\ndefault_tier: t\ntiers:\n  t:\n    agent:\n      {limits}\n"
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        policy_from_text(text)


def test_class_scaled_copies_scale_the_adaptive_bounds() -> None:
    policy = policy_from_text(
        ADAPTIVE + "classes:\n  batch: {scale: 0.5}\n",
    )
    rules = policy.rules_for("acme", "batch")
    assert rules is not None
    scoped = next(r for r in rules if r.scope == "batch")
    assert scoped.adaptive is not None
    assert (scoped.adaptive.min, scoped.adaptive.max) == (5.0, 30.0)


def test_tenant_overrides_pick_the_fixed_or_the_adaptive_burst() -> None:
    """A tenant override that sets ``burst`` replaces the tier's adaptive burst (and the other
    way round); an override that makes the merged limits unusable is a located error."""
    tier = "tiers:\n  t:\n    agent: {requests: 60/min, adaptive_burst: {min: 5, max: 50}}\n"
    policy = policy_from_text(
        "version: 1\n" + tier + "tenants:\n  b: {tier: t, agent: {burst: 9}}\n  c: {tier: t}\n"
    )
    (fixed,) = policy.tenant_rules["b"]
    (adaptive,) = policy.tenant_rules["c"]
    assert (fixed.capacity, fixed.adaptive) == (9.0, None)
    assert adaptive.adaptive is not None and adaptive.capacity == 5.0
    with pytest.raises(PolicyError) as info:
        policy_from_text(
            "version: 1\n" + tier + "tenants:\n  a: {tier: t, agent: {algorithm: fixed_window}}\n"
        )
    assert [str(p) for p in info.value.problems] == [
        "<policy>:6: tenants.a.agent: merged with tier 't': adaptive_burst needs the gcra "
        "algorithm, not fixed_window"
    ]
