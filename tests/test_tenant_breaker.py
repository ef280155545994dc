"""The tenant isolation breaker of a shared pool, on a virtual clock and every store kind."""

from __future__ import annotations

from typing import Any

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.policy import policy_from_text
from sluicegate.stores import Store

POLICY = policy_from_text(
    """
version: 1
default_tier: t
tiers:
  t:
    tenant: {requests: 1200/min, burst: 100}
pools:
  openai:
    requests: 1200/min
    burst: 200
    breaker: {share: 0.5, window: 30s, floor: 60/min, cooldown: 60s, min_volume: 20, pressure: 0}
"""
)


def call(tenant: str) -> RequestContext:
    return RequestContext(tenant, "a", workload_class="realtime", pool="openai")


async def test_runaway_tenant_is_held_to_its_floor_and_alerts_once(store: Store) -> None:
    alerts: list[dict[str, Any]] = []
    clock = VirtualClock(1000.0)
    engine = Engine(POLICY, store, clock, on_alert=alerts.append)
    runaway = {"sent": 0, "ok": 0}
    quiet = {"sent": 0, "ok": 0}
    held_rate: list[int] = []
    trips: list[float] = []
    for step in range(900):  # 90 s: the runaway sends 10/s, each quiet tenant 1/s
        clock.advance(0.1)
        runaway["sent"] += 1
        before = len(alerts)
        runaway["ok"] += (await engine.decide(call("runaway"))).allowed
        if len(alerts) > before:
            trips.append(clock.now())
        if step % 10 == 0:
            for q in ("q1", "q2"):
                quiet["sent"] += 1
                quiet["ok"] += (await engine.decide(call(q))).allowed
        if step % 100 == 99:
            held_rate.append(runaway["ok"])
    assert quiet["ok"] == quiet["sent"]  # the well-behaved tenants never notice
    # Exactly one alert per trip: it trips within seconds, is held for the 60 s cooldown, is let
    # go (half-open) and, still running away, trips again once: two trips in 90 s.
    assert len(alerts) == 2
    assert {a["tenant"] for a in alerts} == {"runaway"} and alerts[0]["pool"] == "openai"
    assert all(a["share"] > 0.5 for a in alerts)
    assert trips[1] - trips[0] >= 60.0  # not before the cooldown ends
    # While held (the 60 s after the trip) the runaway gets about its floor: 1/s.
    per_10s = [b - a for a, b in zip(held_rate, held_rate[1:], strict=False)]
    assert min(per_10s) <= 11, per_10s


async def test_no_trip_below_min_volume_or_share(store: Store) -> None:
    alerts: list[dict[str, Any]] = []
    clock = VirtualClock(1000.0)
    engine = Engine(POLICY, store, clock, on_alert=alerts.append)
    for _ in range(15):  # alone, but below min_volume
        clock.advance(0.5)
        assert (await engine.decide(call("solo"))).allowed
    for _ in range(60):  # two tenants sharing evenly: 50 % each is not above 0.5
        clock.advance(0.5)
        await engine.decide(call("even-a"))
        await engine.decide(call("even-b"))
    assert [a["tenant"] for a in alerts] == ["solo"] or alerts == []


PRESSURE_POLICY = policy_from_text(
    """
version: 1
default_tier: t
tiers:
  t:
    tenant: {requests: 1200/min, burst: 100}
pools:
  openai:
    requests: 1200/min
    burst: 200
    breaker: {share: 0.5, window: 30s, floor: 60/min, cooldown: 60s, min_volume: 20}
"""
)


async def test_a_lone_tenant_on_an_uncontended_pool_is_not_tripped(store: Store) -> None:
    """Default ``pressure: 0.5``: the breaker acts only once the pool's calls over the window
    reach half of what its request limit allows (300 in 30 s here), and only when another
    tenant uses the pool too."""
    assert PRESSURE_POLICY.breakers["openai"].min_volume == 300
    alerts: list[dict[str, Any]] = []
    clock = VirtualClock(1000.0)
    engine = Engine(PRESSURE_POLICY, store, clock, on_alert=alerts.append)
    for _ in range(300):  # 60 s alone at 5/s: 100 % of the pool's calls, a quarter of its rate
        clock.advance(0.2)
        assert (await engine.decide(call("solo"))).allowed
    assert alerts == []
    for _ in range(600):  # 40 s at 15/s: the pool is under pressure, but solo is alone on it
        clock.advance(1 / 15)
        await engine.decide(call("solo"))
    assert alerts == []
    for step in range(600):  # another tenant joins at 1/s: now there is someone to protect
        clock.advance(1 / 15)
        await engine.decide(call("solo"))
        if step % 15 == 0:
            await engine.decide(call("other"))
    assert [a["tenant"] for a in alerts] == ["solo"]
