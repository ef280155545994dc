"""Scale events: an announced fleet start pre-warms the init tier's aggregate budget, shared by
every replica through the store, alerting once, and expiring by itself; on every store kind."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.engine.init_tokens import issue_token
from sluicegate.errors import StoreUnavailable
from sluicegate.policy import policy_from_text
from sluicegate.stores import Store
from sluicegate.stores.failover import FailoverStore
from sluicegate.stores.memory import MemoryStore

SECRET = "s" * 40
WALL = 1_800_000_000.0
# 50 instances x 20 calls at once: each instance's init burst (20) fits, the agent's aggregate
# (burst 200) holds only ten instances' worth.
POLICY = f"""
version: 1
default_tier: t
init:
  window: 60s
  limits: {{requests: 120/min, burst: 20}}
  aggregate: {{requests: 600/min, burst: 200}}
  secret: {SECRET}
tiers:
  t:
    tenant:  {{requests: 100k/min, burst: 5000}}
    agent:   {{requests: 60/min, burst: 20}}
"""


def make(store: Store, clock: VirtualClock, alerts: list[dict[str, Any]] | None = None) -> Engine:
    return Engine(
        policy_from_text(POLICY), store, clock,
        wall_clock=lambda: WALL + clock.now() - 1000.0,
        on_alert=alerts.append if alerts is not None else None,
    )  # fmt: skip


async def start_fleet(engine: Engine, fleet: str, instances: int = 50, calls: int = 20) -> int:
    """Every instance presents its own init token and makes ``calls`` calls; the admitted."""
    admitted = 0
    for i in range(instances):
        instance = f"{fleet}-{i}"
        tok = issue_token(
            SECRET, tenant="acme", agent="worker", instance=instance, ttl=600, now=WALL
        )
        for _ in range(calls):
            ctx = RequestContext("acme", "worker", workload_class="realtime", init_token=tok)
            admitted += (await engine.decide(ctx)).allowed
    return admitted


async def test_without_a_scale_event_the_aggregate_holds_the_fleet_back(store: Store) -> None:
    engine = make(store, VirtualClock(1000.0))
    admitted = await start_fleet(engine, "a")
    assert 200 <= admitted < 300  # the aggregate burst, plus what refills meanwhile


async def test_a_scale_event_prewarms_the_aggregate_for_the_whole_fleet(store: Store) -> None:
    alerts: list[dict[str, Any]] = []
    clock = VirtualClock(1000.0)
    engine = make(store, clock, alerts)
    event = await engine.add_scale_event("acme", "worker", 50, 90)
    assert (event.instances, event.window, event.until - event.created) == (50, 90.0, 90.0)
    assert [a["event"] for a in alerts] == ["scale_event"]
    assert alerts[0]["tenant"] == "acme" and alerts[0]["instances"] == 50
    assert await start_fleet(engine, "a") == 1000  # all 50 x 20 init calls
    # Operational calls (no init token) are not affected by the event.
    ctx = RequestContext("acme", "worker", workload_class="realtime")
    plain = [await engine.decide(ctx) for _ in range(30)]
    assert sum(d.allowed for d in plain) == 20


async def test_the_event_is_shared_by_every_replica_and_expires(store: Store) -> None:
    clock = VirtualClock(1000.0)
    first, second = make(store, clock), make(store, clock)
    await first.add_scale_event("acme", "worker", 50, 60)
    listed = await second.scale_events()
    assert [(e.tenant, e.agent, e.instances) for e in listed] == [("acme", "worker", 50)]
    assert await start_fleet(second, "a") == 1000
    clock.advance(61.0)  # over: the listing is empty and the aggregate is the policy's again
    assert await second.scale_events() == []
    assert await first.scale_events() == []
    # The fleet took 1000 at 10/s: 100 s of the aggregate's rate against its own 20 s burst.
    # 61 s later the debt (39 s) is still above the burst: nothing more yet ...
    assert await start_fleet(second, "b", instances=5, calls=2) == 0
    clock.advance(120.0)  # ... and once it has drained, the policy's own aggregate again.
    assert 200 <= await start_fleet(second, "c") < 300


async def test_a_new_event_replaces_the_previous_one(store: Store) -> None:
    clock = VirtualClock(1000.0)
    engine = make(store, clock)
    await engine.add_scale_event("acme", "worker", 5, 60)
    await engine.add_scale_event("acme", "worker", 50, 60)
    assert [e.instances for e in await engine.scale_events()] == [50]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("acme", "", 5, 60.0), "agent must be a non-empty string"),
        (("acme", "worker", 0, 60.0), "instances must be between 1 and 10000"),
        (("acme", "worker", 10_001, 60.0), "instances must be between 1 and 10000"),
        (("acme", "worker", 5, 0.5), "window must be between 1 s and 3600 s"),
        (("acme", "worker", 5, float("nan")), "window must be between 1 s and 3600 s"),
    ],
)
async def test_bad_scale_events_are_refused_clearly(
    args: tuple[str, str, int, float], message: str
) -> None:
    from sluicegate.stores.memory import MemoryStore

    engine = make(MemoryStore(), VirtualClock(1000.0))
    with pytest.raises(ValueError, match=message):
        await engine.add_scale_event(*args)
    assert await engine.scale_events() == []


async def test_a_policy_without_an_init_tier_has_nothing_to_prewarm() -> None:
    from sluicegate.stores.memory import MemoryStore

    policy = policy_from_text("version: 1\ndefault_tier: t\ntiers: {t: {agent: {requests: 6/s}}}")
    engine = Engine(policy, MemoryStore(), VirtualClock(0.0))
    with pytest.raises(ValueError, match="no init tier"):
        await engine.add_scale_event("acme", "worker", 5, 60)


async def test_an_unknown_tenant_is_refused() -> None:
    from sluicegate.stores.memory import MemoryStore

    listed = POLICY.replace("default_tier: t", "tenants: {acme: {tier: t}}")
    engine = Engine(policy_from_text(listed), MemoryStore(), VirtualClock(0.0))
    with pytest.raises(ValueError, match="unknown tenant 'nobody'"):
        await engine.add_scale_event("nobody", "worker", 5, 60)
    assert (await engine.add_scale_event("acme", "worker", 5, 60)).tenant == "acme"


async def test_the_event_also_prewarms_the_tiers_tenant_allowance(store: Store) -> None:
    """With ``init.tenant`` (here the tighter budget: burst 200) the event raises it too."""
    text = POLICY.replace(
        "aggregate: {requests: 600/min, burst: 200}",
        "aggregate: {requests: 6000/min, burst: 2000}\n  tenant: {requests: 600/min, burst: 200}",
    )
    clock = VirtualClock(1000.0)
    engine = Engine(
        policy_from_text(text), store, clock, wall_clock=lambda: WALL + clock.now() - 1000.0
    )
    assert 200 <= await start_fleet(engine, "a") < 300
    # Right after that burst: the event's larger burst takes effect at once, minus what the
    # first fleet still owes (its ~200 calls), so 800 more of the 1000 fit.
    await engine.add_scale_event("acme", "worker", 50, 60)
    assert 780 <= await start_fleet(engine, "b") <= 820


async def test_scale_events_never_disturb_bucket_state_on_the_memory_store() -> None:
    """Regression: the engine's clock (monotonic, or virtual here) is far from the wall clock
    the events' times use; value calls must run on the engine's clock, or the memory store's
    sweep (which value calls drive) would take every live bucket for an idle one."""
    from sluicegate.stores.memory import MemoryStore

    store = MemoryStore(sweep_interval=0.0)
    clock = VirtualClock(50.0)  # like a monotonic clock shortly after boot
    engine = Engine(policy_from_text(POLICY), store, clock, wall_clock=lambda: WALL)
    ctx = RequestContext("acme", "worker", workload_class="realtime")
    assert sum([(await engine.decide(ctx)).allowed for _ in range(20)]) == 20
    before = dict(store._buckets)
    await engine.add_scale_event("acme", "worker", 5, 60)
    await engine.scale_events()
    assert {k: store._buckets.get(k) for k in before} == before
    assert not (await engine.decide(ctx)).allowed  # the agent's burst (20) is still spent


async def test_an_event_can_be_ended_early_on_every_replica(store: Store) -> None:
    alerts: list[dict[str, Any]] = []
    clock = VirtualClock(1000.0)
    first, second = make(store, clock, alerts), make(store, clock)
    assert await first.end_scale_event("acme", "worker") is None  # nothing to end
    added = await first.add_scale_event("acme", "worker", 50, 90)
    clock.advance(0.5)
    ended = await first.end_scale_event("acme", "worker")
    assert ended is not None and ended.until == added.created + 0.5
    assert [a["event"] for a in alerts] == ["scale_event", "scale_event_ended"]
    assert await second.scale_events() == []
    assert 200 <= await start_fleet(second, "a") < 300  # the policy's aggregate, not 1000
    assert await first.end_scale_event("acme", "worker") is None


async def test_an_init_tier_with_nothing_shared_has_nothing_to_prewarm() -> None:
    from sluicegate.stores.memory import MemoryStore

    def engine_for(extra: str) -> Engine:
        text = POLICY.replace("  aggregate: {requests: 600/min, burst: 200}\n", extra)
        return Engine(policy_from_text(text), MemoryStore(), VirtualClock(0.0))

    with pytest.raises(ValueError, match="no aggregate or tenant limits"):
        await engine_for("").add_scale_event("acme", "worker", 5, 60)
    allowance = engine_for("  tenant: {requests: 600/min, burst: 200}\n")
    assert (await allowance.add_scale_event("acme", "worker", 5, 60)).instances == 5


class _FlakyPrimary(MemoryStore):
    """A memory store standing in for Redis that fails (StoreUnavailable) while ``down``."""

    down = False

    async def apply(self, batch: Any, now: float) -> Any:
        self._check()
        return await super().apply(batch, now)

    async def get_value(self, key: str, now: float) -> str | None:
        self._check()
        return await super().get_value(key, now)

    async def put_value(self, key: str, value: str, ttl: float, now: float) -> None:
        self._check()
        await super().put_value(key, value, ttl, now)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("cannot reach redis at 127.0.0.1:1: connection refused")


@pytest.mark.parametrize("mode", ["local", "fail_open"])
async def test_a_known_event_outlives_a_store_outage(mode: str) -> None:
    """A degraded FailoverStore answers values from its in-process fallback, which never saw
    the event: the replica keeps the event it last read until the event's own end."""
    primary = _FlakyPrimary()
    clock = VirtualClock(1000.0)
    store = FailoverStore(primary, mode=mode, clock=clock, name="redis test")  # type: ignore[arg-type]
    engine = make(store, clock)  # type: ignore[arg-type]
    await engine.add_scale_event("acme", "worker", 50, 60)
    assert await start_fleet(engine, "a", instances=1, calls=1) == 1  # reads the event
    primary.down = True
    clock.advance(2.0)  # past the replica's 1 s cache: the next init call re-reads
    assert (await engine._scale_event("acme", "worker")) is not None
    clock.advance(60.0)  # the event's own end still holds
    assert (await engine._scale_event("acme", "worker")) is None
