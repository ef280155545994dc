"""The engine: planes, axes, classes, pools, unknown identities, settle."""

from __future__ import annotations

import math

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, Outcome, Reason, RequestContext, safe_id
from sluicegate.policy import Axis, Plane, load_policy, policy_from_text
from sluicegate.stores import MemoryStore

from .conftest import EXAMPLES

POLICY = """
version: 1
classes:
  unknown: {unknown}
  batch: {{priority: 2, max_wait: 30s, scale: 0.5}}
  realtime: {{priority: 0, max_wait: 0s}}
  vip: {{limits: {{session: {{requests: 100/min, burst: 50}}}}}}
tiers:
  pro:
    tenant:  {{requests: 600/min, burst: 100, tokens: 100k/min}}
    agent:   {{requests: 300/min, burst: 10}}
    session: {{requests: 30/min, burst: 5, tokens: 10k/min}}
tenants:
  acme: {{tier: pro}}
  beta: {{tier: pro, session: {{burst: 2}}}}
costs:
  - {{path_prefix: /v1/images, units: 20}}
pools:
  shared: {{requests: 10/s, burst: 8}}
"""


def make(unknown: str = "default") -> tuple[Engine, VirtualClock, MemoryStore]:
    clock = VirtualClock(100.0)
    store = MemoryStore()
    return Engine(policy_from_text(POLICY.format(unknown=unknown)), store, clock), clock, store


def ctx(**kw: object) -> RequestContext:
    base: dict[str, object] = {
        "tenant": "acme",
        "agent": "a1",
        "session": "s1",
        "workload_class": "realtime",
    }
    base.update(kw)
    return RequestContext(**base)  # type: ignore[arg-type]


async def test_session_plane_binds_and_is_named() -> None:
    engine, _, _ = make()
    outcomes = [(await engine.decide(ctx())).outcome for _ in range(6)]
    assert outcomes == [Outcome.ALLOW] * 5 + [Outcome.REFUSE]
    d = await engine.decide(ctx())
    assert d.reason is Reason.RATE_LIMITED
    [refusing] = d.refusing
    assert (refusing.plane, refusing.axis) == (Plane.SESSION, Axis.REQUESTS)
    assert d.retry_after == pytest.approx(2.0)
    # Other sessions of the same agent still go, until the agent plane binds at 10.
    results = [(await engine.decide(ctx(session=f"s{i}"))).allowed for i in range(2, 8)]
    assert results == [True] * 5 + [False]
    assert {b.plane for b in (await engine.decide(ctx(session="s9"))).refusing} == {Plane.AGENT}


async def test_same_session_id_under_two_tenants_is_two_buckets() -> None:
    engine, _, _ = make()
    for _ in range(5):
        assert (await engine.decide(ctx())).allowed
    assert not (await engine.decide(ctx())).allowed
    assert (await engine.decide(ctx(tenant="beta"))).allowed
    # ...and under two agents of one tenant too.
    assert (await engine.decide(ctx(agent="a2"))).allowed


async def test_tenant_override_merges_onto_tier() -> None:
    engine, _, _ = make()
    got = [(await engine.decide(ctx(tenant="beta"))).allowed for _ in range(3)]
    assert got == [True, True, False]  # beta's session burst is 2; its rate stays 30/min


async def test_unknown_tenant_refused_without_touching_state() -> None:
    engine, _, store = make()
    d = await engine.decide(ctx(tenant="mallory"))
    assert d.outcome is Outcome.REFUSE and d.reason is Reason.UNKNOWN_TENANT
    assert d.retry_after == math.inf and len(store) == 0


async def test_default_tier_serves_unlisted_tenants() -> None:
    policy = policy_from_text(
        "version: 1\ndefault_tier: free\ntiers:\n  free: {agent: {requests: 1/s, burst: 1}}\n"
    )
    engine = Engine(policy, MemoryStore(), VirtualClock(0))
    assert (await engine.decide(RequestContext("anyone", "a"))).outcome is Outcome.ALLOW
    # The default class (interactive) may wait up to 2 s: the next call is deferred 1 s.
    waited = await engine.decide(RequestContext("anyone", "a"))
    assert waited.outcome is Outcome.WAIT and waited.delay == pytest.approx(1.0)
    # A 2 s deferral would exceed classes.max_defer (1 s): refused, retry after exactly 2 s.
    third = await engine.decide(RequestContext("anyone", "a"))
    assert not third.allowed and third.retry_after == pytest.approx(2.0)
    assert not (await engine.decide(RequestContext("anyone", "a"))).allowed


async def test_token_axis_reserves_and_settles() -> None:
    engine, _, _ = make()
    d = await engine.decide(ctx(tokens=9000))
    assert d.allowed and d.reserved_tokens == 9000
    refused = await engine.decide(ctx(tokens=2000))
    assert [(b.plane, b.axis) for b in refused.refusing] == [(Plane.SESSION, Axis.TOKENS)]
    settled = await engine.settle(d.id, 1000)
    assert settled.delta == -8000
    assert (await engine.decide(ctx(tokens=2000))).allowed
    too_big = await engine.decide(ctx(session="s2", tokens=20_000))
    assert too_big.reason is Reason.COST_EXCEEDS_CAPACITY and too_big.retry_after == math.inf


async def test_settle_rejects_bad_numbers() -> None:
    engine, _, _ = make()
    with pytest.raises(ValueError):
        await engine.settle("x", -1)
    with pytest.raises(ValueError):
        await engine.settle("x", float("nan"))


async def test_batch_class_waits_and_is_capped_by_scale() -> None:
    engine, _, _ = make()
    first = [await engine.decide(ctx(workload_class="batch", session=f"b{i}")) for i in range(6)]
    # Agent burst 10 x scale 0.5 = 5 immediately; the 6th waits on the class-scoped bucket.
    assert [d.outcome for d in first] == [Outcome.ALLOW] * 5 + [Outcome.WAIT]
    assert first[-1].delay == pytest.approx(0.4)  # 300/min x 0.5 = 2.5/s
    waiting = first[-1].refusing or [b for b in first[-1].buckets if b.rule.scope == "batch"]
    assert waiting
    # Realtime still has the other half of the agent budget, right now.
    assert (await engine.decide(ctx(session="r1"))).outcome is Outcome.ALLOW


async def test_class_override_replaces_plane_limit() -> None:
    engine, _, _ = make()
    got = [(await engine.decide(ctx(workload_class="vip"))).allowed for _ in range(12)]
    assert got == [True] * 10 + [False] * 2  # the agent plane (10) binds before vip's session 50


async def test_unknown_class_served_as_default_with_warning() -> None:
    engine, _, _ = make()
    d = await engine.decide(ctx(workload_class="turbo"))
    assert d.allowed and d.workload_class == "interactive" and "turbo" in (d.warning or "")


async def test_unknown_class_rejected_when_policy_says_so() -> None:
    engine, _, store = make(unknown="reject")
    d = await engine.decide(ctx(workload_class="turbo"))
    assert d.reason is Reason.UNKNOWN_CLASS and not d.allowed and len(store) == 0


async def test_cost_axis_uses_route_weights_and_pool_is_shared() -> None:
    policy = policy_from_text(
        "version: 1\ntiers:\n  t: {tenant: {cost: 100/min}}\ndefault_tier: t\n"
        "costs: [{path_prefix: /v1/images, units: 40}]\n"
        "pools:\n  p: {requests: 1/s, burst: 3}\n"
    )
    engine = Engine(policy, MemoryStore(), VirtualClock(0))
    rt = {"workload_class": "realtime"}
    assert (await engine.decide(RequestContext("x", "a", path="/v1/images", **rt))).allowed
    assert (await engine.decide(RequestContext("x", "a", path="/v1/images", **rt))).allowed
    d = await engine.decide(RequestContext("x", "a", path="/v1/images", **rt))
    assert [b.axis for b in d.refusing] == [Axis.COST]
    # The pool is shared by tenants: three calls from three tenants drain it.
    for tenant in ("p1", "p2", "p3"):
        assert (await engine.decide(RequestContext(tenant, "a", pool="p", **rt))).allowed
    d = await engine.decide(RequestContext("p4", "a", pool="p", **rt))
    assert [b.plane for b in d.refusing] == [Plane.POOL]


async def test_policy_swap_applies_to_later_decisions() -> None:
    engine, _, _ = make()
    for _ in range(5):
        await engine.decide(ctx())
    assert not (await engine.decide(ctx())).allowed
    engine.policy = policy_from_text(
        POLICY.format(unknown="default").replace("burst: 5,", "burst: 9,")
    )
    assert (await engine.decide(ctx())).allowed


async def test_no_session_skips_the_session_plane() -> None:
    engine, _, _ = make()
    d = await engine.decide(ctx(session=None, tokens=100))
    assert d.allowed and Plane.SESSION not in {b.plane for b in d.buckets}
    assert (await engine.settle(d.id, 50)).delta == -50


def test_safe_id_cannot_alias_or_escape_the_hash_tag() -> None:
    assert safe_id("s1") == "s1"
    tricky = ["a:b", "x}y", "{evil}", "s1:tokens", "ü", "a" * 500, ""]
    encoded = [safe_id(t) for t in tricky]
    assert all(":" not in e and "{" not in e and "}" not in e for e in encoded)
    assert len(set(encoded)) == len(encoded)


async def test_example_policy_decides() -> None:
    policy = load_policy(EXAMPLES / "agentic.yaml")
    engine = Engine(policy, MemoryStore(), VirtualClock(0))
    d = await engine.decide(RequestContext("acme", "planner", "s1", tokens=4000, pool="openai"))
    # 10 limits, the agent's adaptive-burst demand counter, retry budget, 3 breaker counters
    assert d.allowed and len(d.buckets) == 15
    assert d.bursts == (("agent-requests", 30.0),)  # adaptive: min until demand is known


async def test_max_defer_caps_how_far_a_waiting_call_reserves_ahead() -> None:
    policy = policy_from_text(
        "version: 1\ndefault_tier: t\nclasses: {max_defer: 5s}\n"
        "tiers:\n  t: {agent: {requests: 1/s, burst: 1}}\n"
    )
    engine = Engine(policy, MemoryStore(), VirtualClock(0))
    batch = RequestContext("x", "a", workload_class="batch")  # max_wait 60 s by default
    delays = [(await engine.decide(batch)).delay for _ in range(7)]
    assert delays == pytest.approx([0, 1, 2, 3, 4, 5, 0])
    assert not (await engine.decide(batch)).allowed
