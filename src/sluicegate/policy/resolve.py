"""Validated spec -> frozen, precomputed :class:`Policy`.

Resolution merges each tenant's overrides onto its tier (axis by axis), turns every rate into a
store :class:`~sluicegate.stores.base.Limit`, and applies workload-class profiles:

* Every class shares the plane buckets (tenant, agent, session), so plane limits hold in total.
* A class with ``scale < 1`` also gets class-scoped buckets at ``scale`` x each plane limit, which
  caps that class's share (``batch: {scale: 0.5}`` leaves half of every budget to the others).
* A class with ``limits`` replaces the named plane/axis limits, for that class only, with
  class-scoped buckets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType
from typing import Any

from sluicegate.policy.schema import (
    AXIS_BURST_KEYS,
    BUILTIN_CLASSES,
    PLANES,
    AdaptiveBurstSpec,
    AxisLimit,
    ClassSpec,
    CostRule,
    PlaneLimits,
    PlaneSet,
    PolicySpec,
    PoolSpec,
)
from sluicegate.policy.units import Rate
from sluicegate.stores.base import Algorithm, Limit

#: Lease of a concurrency slot whose call never settles (a crashed caller).
CONCURRENCY_LEASE = 300.0


class Plane(StrEnum):
    TENANT = "tenant"
    AGENT = "agent"
    SESSION = "session"
    POOL = "pool"
    TRACE = "trace"


class Axis(StrEnum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    COST = "cost"
    CONCURRENCY = "concurrency"
    RETRIES = "retries"
    SHARE = "share"  # tenant-breaker bookkeeping: not a limit, never refuses
    DEMAND = "demand"  # adaptive-burst bookkeeping: not a limit, never refuses


#: Limit of the bookkeeping counters (breaker shares, adaptive-burst demand): large enough
#: never to refuse, small enough that ``limit - remaining`` is exact in a double.
SHARE_COUNTER_LIMIT = 1e12


@dataclass(frozen=True, slots=True)
class AdaptiveBurst:
    """The resolved ``adaptive_burst`` of one rule (see ``AdaptiveBurstSpec``).

    The demand is kept in a companion sliding-window counter (axis ``demand``) that every
    admitted call of the rule adds its cost to; ``capacity(count)`` turns the counter's value
    into the burst for the next call."""

    axis: Axis
    window: float
    factor: float
    min: float
    max: float

    @property
    def counter(self) -> Limit:
        return Limit(Algorithm.SLIDING_WINDOW, self.window, SHARE_COUNTER_LIMIT)

    def capacity(self, count: float) -> float:
        """The burst for a caller that was admitted ``count`` units in the last window."""
        return min(self.max, max(self.min, self.factor * count / self.window))

    def scaled(self, factor: float) -> AdaptiveBurst:
        return AdaptiveBurst(
            self.axis, self.window, self.factor, max(1.0, self.min * factor),
            max(1.0, self.max * factor),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rule:
    """One bucket template: a plane, an axis, a limit, and the class scope it is kept under."""

    plane: Plane
    axis: Axis
    limit: Limit
    rate: Rate | None  # None for concurrency
    scope: str | None = None  # class name for class-scoped buckets
    pool: str | None = None
    shadow: bool = False  # decides and reports, never refuses
    #: The burst follows demand (a GCRA rule), or, on a ``demand`` rule, whose demand it counts.
    adaptive: AdaptiveBurst | None = None
    #: Stable name used in headers and reports, e.g. ``session-tokens``, ``agent-requests-batch``.
    name: str = field(init=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.axis is Axis.DEMAND:  # "agent-requests-demand"
            assert self.adaptive is not None
            head = f"pool-{self.pool}" if self.pool else self.plane.value
            name = f"{head}-{self.adaptive.axis.value}-demand"
            object.__setattr__(self, "name", name + (f"-{self.scope}" if self.scope else ""))
            return
        if self.axis is Axis.SHARE:  # "share-openai", "trip-openai", "pool-openai-share"
            object.__setattr__(self, "name", self.scope or f"pool-{self.pool}-share")
            return
        if self.axis is Axis.RETRIES:  # "agent-retry-budget", "trace-retries"
            name = "trace-retries" if self.plane is Plane.TRACE else f"{self.plane}-retry-budget"
            object.__setattr__(self, "name", name)
            return
        head = f"pool-{self.pool}" if self.pool else self.plane.value
        name = f"{head}-{self.axis.value}" + (f"-{self.scope}" if self.scope else "")
        object.__setattr__(self, "name", name)

    @property
    def capacity(self) -> float:
        return self.limit.capacity

    @property
    def key_axis(self) -> str:
        """The axis part of this rule's bucket key (a demand counter's names its rule's axis)."""
        if self.axis is Axis.DEMAND:
            assert self.adaptive is not None
            return f"{self.adaptive.axis.value}-demand"
        return self.axis.value

    def demand_rule(self) -> Rule:
        """The companion counter of an adaptive rule, kept beside its bucket."""
        assert self.adaptive is not None
        return Rule(
            self.plane, Axis.DEMAND, self.adaptive.counter, None, self.scope, self.pool,
            self.shadow, self.adaptive,
        )  # fmt: skip

    def scaled(self, factor: float, scope: str) -> Rule:
        """A class-scoped copy holding ``factor`` of this rule's rate and capacity."""
        if self.rate is None:
            capacity = max(1.0, math.floor(self.limit.capacity * factor))
            limit = Limit(self.limit.algorithm, self.limit.period, capacity)
            return Rule(self.plane, self.axis, limit, None, scope, self.pool, self.shadow)
        rate = Rate(self.rate.count * factor, self.rate.period)
        capacity = max(1.0, self.limit.capacity * factor)
        if self.limit.algorithm is Algorithm.GCRA:
            limit = Limit(Algorithm.GCRA, rate.period / rate.count, capacity)
        else:
            limit = Limit(self.limit.algorithm, self.limit.period, max(1.0, rate.count))
        adaptive = self.adaptive.scaled(factor) if self.adaptive is not None else None
        return Rule(self.plane, self.axis, limit, rate, scope, self.pool, self.shadow, adaptive)


@dataclass(frozen=True, slots=True)
class ClassProfile:
    name: str
    priority: int
    max_wait: float
    sla_p95: float | None
    scale: float
    overrides: tuple[Rule, ...]


def _default_profile(name: str) -> ClassSpec:
    """Built-in defaults for classes a policy does not declare."""
    if name == "realtime":
        return ClassSpec(priority=0, max_wait=0.0, sla_p95=0.8)
    if name == "batch":
        return ClassSpec(priority=2, max_wait=60.0, sla_p95=60.0)
    return ClassSpec(priority=1, max_wait=2.0, sla_p95=3.0)


def _axis_rule(
    plane: Plane,
    axis: Axis,
    spec: AxisLimit,
    burst: float | None,
    default_algorithm: str | None,
    shadow: bool,
    adaptive_spec: AdaptiveBurstSpec | None = None,
) -> Rule:
    algorithm = Algorithm(spec.algorithm or default_algorithm or Algorithm.GCRA)
    capacity = spec.burst if spec.burst is not None else burst
    rate = spec.rate
    adaptive = None
    if adaptive_spec is not None:
        a = adaptive_spec
        adaptive = AdaptiveBurst(axis, a.window, a.factor, a.min, a.max)
        capacity = a.min  # the burst until the caller's demand is known
    if algorithm is Algorithm.GCRA:
        limit = Limit(algorithm, rate.period / rate.count, capacity if capacity else rate.count)
    else:
        # Window algorithms count ``rate.count`` per window of ``rate.period``; burst is moot.
        limit = Limit(algorithm, rate.period, rate.count)
    shadow = shadow if spec.shadow is None else spec.shadow
    return Rule(plane, axis, limit, rate, shadow=shadow, adaptive=adaptive)


def plane_rules(plane: Plane, limits: PlaneLimits | None) -> list[Rule]:
    """Rules of one plane's limits, in axis order."""
    if limits is None:
        return []
    rules: list[Rule] = []
    plane_shadow = bool(limits.shadow)
    for axis_name, burst_key in AXIS_BURST_KEYS:
        spec = getattr(limits, axis_name)
        if spec is not None:
            burst = getattr(limits, burst_key)
            rules.append(
                _axis_rule(
                    plane,
                    Axis(axis_name),
                    spec,
                    burst,
                    limits.algorithm,
                    plane_shadow,
                    limits.adaptive_for(axis_name),
                )  # fmt: skip
            )
    if limits.concurrency is not None:
        limit = Limit(Algorithm.CONCURRENCY, CONCURRENCY_LEASE, float(limits.concurrency))
        rules.append(Rule(plane, Axis.CONCURRENCY, limit, None, shadow=plane_shadow))
    return rules


def _merge(base: PlaneLimits | None, override: PlaneLimits | None) -> PlaneLimits | None:
    """Override wins key by key; keys it does not set keep the base's values. A fixed burst
    and an adaptive one exclude each other, so whichever the override sets replaces the
    other on that axis. Raises ``ValueError`` when the merged limits are still inconsistent
    (e.g. an override's ``algorithm: fixed_window`` under the base's adaptive burst)."""
    if override is None:
        return base
    if base is None:
        return override
    update: dict[str, Any] = {k: getattr(override, k) for k in override.model_fields_set}
    if "burst" in update:
        update.setdefault("adaptive_burst", None)
    if update.get("adaptive_burst") is not None:
        update.setdefault("burst", None)
    for axis, burst_key in AXIS_BURST_KEYS:
        limit: AxisLimit | None = getattr(base, axis)
        if burst_key in update and axis not in update and limit and limit.adaptive_burst:
            update[axis] = limit.model_copy(update={"adaptive_burst": None})
    merged = base.model_copy(update=update)
    merged.check_adaptive()  # model_copy does not validate; the cross-field rule must still hold
    return merged


def merge_problems(spec: PolicySpec) -> list[tuple[tuple[str, ...], str]]:
    """``(location, message)`` of every tenant whose overrides, merged onto its tier, are not a
    valid set of limits (the loader reports them with their lines)."""
    problems: list[tuple[tuple[str, ...], str]] = []
    for name, tenant in spec.tenants.items():
        tier = spec.tiers.get(tenant.tier)
        for plane in PLANES:
            override = getattr(tenant, plane)
            if tier is None or override is None:
                continue
            try:
                _merge(getattr(tier, plane), override)
            except ValueError as exc:
                message = f"merged with tier {tenant.tier!r}: {exc}"
                problems.append((("tenants", name, plane), message))
    return problems


def planeset_rules(planes: PlaneSet) -> tuple[Rule, ...]:
    out: list[Rule] = []
    for plane in PLANES:
        out += plane_rules(Plane(plane), getattr(planes, plane))
    return tuple(out)


def apply_class(rules: tuple[Rule, ...], profile: ClassProfile) -> tuple[Rule, ...]:
    """The rules a request of ``profile``'s class is checked against (see module docstring)."""
    overridden = {(r.plane, r.axis) for r in profile.overrides}
    out = [r for r in rules if (r.plane, r.axis) not in overridden]
    if profile.scale < 1.0:
        out += [
            r.scaled(profile.scale, profile.name)
            for r in rules
            if (r.plane, r.axis) not in overridden
        ]
    out += profile.overrides
    order = {Plane.TENANT: 0, Plane.AGENT: 1, Plane.SESSION: 2, Plane.POOL: 3}
    return tuple(sorted(out, key=lambda r: (order[r.plane], r.scope or "")))


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """The resolved retry budget.

    Finagle's rule "retries in the last ttl <= min_per_second * ttl + percent * originals in the
    last ttl" is linear, so it needs one counter, not two: a sliding-window counter of
    ``retries - percent * originals`` with limit ``min_per_second * ttl``. An admitted original
    call adds ``-deposit`` (a negative cost always lands), a retry adds 1 and is refused when
    the counter would pass the limit; the window's "remaining" is exactly the retries left.
    ``rule`` is that per-agent (or per-tenant) counter. ``trace_rule``, when set, caps the
    retries of one pipeline (trace id) at ``max_per_trace`` per ``trace_ttl``.
    """

    rule: Rule
    deposit: float
    trace_rule: Rule | None


def _retry_budget(spec: PolicySpec) -> RetryBudget | None:
    rb = spec.retry_budget
    if rb is None:
        return None
    reserve = rb.min_per_second * rb.ttl
    plane = Plane.AGENT if rb.scope == "agent" else Plane.TENANT
    rule = Rule(
        plane,
        Axis.RETRIES,
        Limit(Algorithm.SLIDING_WINDOW, rb.ttl, reserve),
        Rate(max(reserve, 1e-9), rb.ttl),
    )
    trace_rule = None
    if rb.max_per_trace is not None:
        n = float(rb.max_per_trace)
        trace_rule = Rule(
            Plane.TRACE,
            Axis.RETRIES,
            Limit(Algorithm.GCRA, rb.trace_ttl / n, n),
            Rate(n, rb.trace_ttl),
        )
    return RetryBudget(rule, rb.percent / 100.0, trace_rule)


@dataclass(frozen=True, slots=True)
class InitTier:
    """The resolved cold-start tier (see ``InitTierSpec``).

    ``marker`` is a one-unit GCRA bucket per (agent, instance) whose emission interval is the
    longest token lifetime: consuming it marks the token's first use, and afterwards
    ``tat - now`` tells how long ago that was, so "still inside the window" is
    ``tat - now > max_token_ttl - window``. Once the marker refills, every token that could
    have used it has expired.
    """

    window: float
    max_token_ttl: float
    secrets: tuple[str, ...]
    strict: bool
    instance_rules: tuple[Rule, ...]
    aggregate_rules: tuple[Rule, ...]
    marker: Limit
    #: The tenant plane of init calls (``init.tenant``), or None: the tenant's own limits hold.
    tenant_rules: tuple[Rule, ...] | None = None

    def prewarmed(self, rules: tuple[Rule, ...], instances: int) -> tuple[Rule, ...]:
        """``rules`` (the aggregate, or the tier's tenant allowance) during a scale event of
        ``instances`` instances: on each axis the instance limits also have, the burst becomes
        at least ``instances`` times the instance's burst, so the whole fleet's start-up burst
        fits at once. The rate stays the policy's, and the buckets are the same (same keys,
        same emission interval): GCRA keeps no capacity in its state, so the larger burst takes
        effect at once, even right after earlier use, and what the fleet took beyond the
        policy's own burst is paid back afterwards at the policy's rate (the aggregate admits
        nothing until it has drained under its own burst again). So an event lets a fleet
        start *sooner*; it never raises what the agent gets over time."""
        per_axis = {r.axis: r for r in self.instance_rules if r.rate is not None}
        out = []
        for rule in rules:
            one = per_axis.get(rule.axis)
            capacity = (
                rule.capacity if one is None else max(rule.capacity, instances * one.capacity)
            )
            if rule.limit.algorithm is not Algorithm.GCRA or capacity == rule.capacity:
                out.append(rule)
                continue
            limit = Limit(rule.limit.algorithm, rule.limit.period, capacity)
            out.append(
                Rule(rule.plane, rule.axis, limit, rule.rate, rule.scope, rule.pool, rule.shadow)
            )
        return tuple(out)


def _init_tier(spec: PolicySpec) -> InitTier | None:
    init = spec.init
    if init is None:
        return None
    scoped = [
        Rule(r.plane, r.axis, r.limit, r.rate, "init", r.pool, r.shadow)
        for r in plane_rules(Plane.SESSION, init.limits)
    ]
    aggregate = [
        Rule(r.plane, r.axis, r.limit, r.rate, "init", r.pool, r.shadow)
        for r in plane_rules(Plane.AGENT, init.aggregate)
    ]
    tenant = None
    if init.tenant is not None:
        tenant = tuple(
            Rule(r.plane, r.axis, r.limit, r.rate, "init", r.pool, r.shadow)
            for r in plane_rules(Plane.TENANT, init.tenant)
        )
    current = init.secret or os.environ.get(init.secret_env, "")
    previous = init.previous_secret or os.environ.get(init.previous_secret_env, "")
    secrets = tuple(s for s in (current, previous) if len(s.encode()) >= 32)
    marker = Limit(Algorithm.GCRA, init.max_token_ttl, 1.0)
    return InitTier(
        init.window, init.max_token_ttl, secrets, init.strict, tuple(scoped), tuple(aggregate),
        marker, tenant,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PoolBreaker:
    """The resolved tenant breaker of one pool (see ``BreakerSpec``).

    Every call through the pool adds 1 to the tenant's share counter and to the pool's total
    (sliding windows of ``window``), and checks (cost 0) the tenant's one-unit trip bucket,
    whose refill time is the cooldown: ``reset > 0`` means the breaker is open. When the share
    passes the threshold, consuming the trip bucket opens the breaker; only one call (across
    all replicas) succeeds in consuming it, and that one raises the alert: once per trip.
    """

    pool: str
    share: float
    min_volume: int
    cooldown: float
    floor_rule: Rule
    tenant_counter: Rule
    pool_counter: Rule
    trip: Rule


def _breaker(name: str, pool: PoolSpec) -> PoolBreaker | None:
    spec = pool.breaker
    if spec is None:
        return None
    min_volume = spec.min_volume
    pool_requests = pool.requests.rate if pool.requests is not None else None
    if pool_requests is not None and spec.pressure > 0:
        allowed = pool_requests.count * spec.window / pool_requests.period
        min_volume = max(min_volume, math.ceil(spec.pressure * allowed))
    floor = spec.floor
    floor_limit = Limit(Algorithm.GCRA, floor.period / floor.count, max(1.0, floor.count))
    counter = Limit(Algorithm.SLIDING_WINDOW, spec.window, SHARE_COUNTER_LIMIT)
    return PoolBreaker(
        pool=name,
        share=spec.share,
        min_volume=min_volume,
        cooldown=spec.cooldown,
        floor_rule=Rule(Plane.TENANT, Axis.REQUESTS, floor_limit, floor, f"breaker-{name}"),
        tenant_counter=Rule(Plane.TENANT, Axis.SHARE, counter, None, f"share-{name}"),
        pool_counter=Rule(Plane.POOL, Axis.SHARE, counter, None, None, name),
        trip=Rule(
            Plane.TENANT,
            Axis.SHARE,
            Limit(Algorithm.GCRA, spec.cooldown, 1.0),
            None,
            f"trip-{name}",
        ),  # fmt: skip
    )


@dataclass(frozen=True)
class Policy:
    """The resolved policy the engine runs on. Immutable; reloading builds a new one."""

    spec: PolicySpec
    source: str
    tenant_rules: Mapping[str, tuple[Rule, ...]]
    tier_rules: Mapping[str, tuple[Rule, ...]]
    tenant_tier: Mapping[str, str]
    default_tier: str | None
    classes: Mapping[str, ClassProfile]
    default_class: str
    reject_unknown_class: bool
    costs: tuple[CostRule, ...]
    default_cost: float
    pools: Mapping[str, tuple[Rule, ...]]
    settle_ttl: float
    store_url: str = "memory"
    shadow: bool = False
    retry_budget: RetryBudget | None = None
    max_defer: float = 1.0
    init: InitTier | None = None
    breakers: Mapping[str, PoolBreaker] = field(default_factory=dict)
    _cache: dict[tuple[str, str], tuple[Rule, ...] | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def rules_for(self, tenant: str, class_name: str) -> tuple[Rule, ...] | None:
        """Plane rules for a tenant's requests of a class; ``None`` for an unknown tenant."""
        key = (tenant, class_name)
        cached = self._cache.get(key, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        base = self.tenant_rules.get(tenant)
        if base is None and self.default_tier is not None:
            base = self.tier_rules[self.default_tier]
        result = None if base is None else apply_class(base, self.classes[class_name])
        if len(self._cache) < 100_000:
            self._cache[key] = result
        return result

    def cost_units(self, method: str, path: str) -> float:
        """Weighted cost of a call: the first matching rule, else ``default_cost``."""
        for rule in self.costs:
            if path.startswith(rule.path_prefix) and (rule.method is None or rule.method == method):
                return rule.units
        return self.default_cost

    @cached_property
    def summary(self) -> str:
        n_classes = len(self.classes)
        return (
            f"{len(self.tier_rules)} tiers, {len(self.tenant_rules)} tenants, {n_classes} classes, "
            f"{len(self.pools)} pools, store {self.store_url}"
        )


def resolve(spec: PolicySpec, source: str = "<policy>") -> Policy:
    """Build the frozen :class:`Policy` from a validated spec."""
    tier_rules = {name: planeset_rules(tier) for name, tier in spec.tiers.items()}
    tenant_rules: dict[str, tuple[Rule, ...]] = {}
    for name, tenant in spec.tenants.items():
        tier = spec.tiers[tenant.tier]
        merged = PlaneSet(
            tenant=_merge(tier.tenant, tenant.tenant),
            agent=_merge(tier.agent, tenant.agent),
            session=_merge(tier.session, tenant.session),
        )
        tenant_rules[name] = planeset_rules(merged)
    declared = dict(spec.classes.model_extra or {})
    classes: dict[str, ClassProfile] = {}
    for name in (*BUILTIN_CLASSES, *[n for n in declared if n not in BUILTIN_CLASSES]):
        cs = declared.get(name) or _default_profile(name)
        if not isinstance(cs, ClassSpec):
            cs = ClassSpec.model_validate(cs)
        overrides = planeset_rules(cs.limits) if cs.limits else ()
        overrides = tuple(
            Rule(r.plane, r.axis, r.limit, r.rate, name, r.pool, r.shadow) for r in overrides
        )
        classes[name] = ClassProfile(
            name, cs.priority, cs.max_wait, cs.sla_p95, cs.scale, overrides
        )
    pools: dict[str, tuple[Rule, ...]] = {}
    for name, pool in spec.pools.items():
        pools[name] = tuple(
            Rule(Plane.POOL, r.axis, r.limit, r.rate, None, name, r.shadow)
            for r in plane_rules(Plane.POOL, pool)
        )
    return Policy(
        spec=spec,
        source=source,
        tenant_rules=MappingProxyType(tenant_rules),
        tier_rules=MappingProxyType(tier_rules),
        tenant_tier=MappingProxyType({n: t.tier for n, t in spec.tenants.items()}),
        default_tier=spec.default_tier,
        classes=MappingProxyType(classes),
        default_class=spec.classes.default,
        reject_unknown_class=spec.classes.unknown == "reject",
        costs=tuple(spec.costs),
        default_cost=spec.default_cost,
        pools=MappingProxyType(pools),
        settle_ttl=spec.settle_ttl,
        store_url=spec.store,
        shadow=spec.shadow,
        retry_budget=_retry_budget(spec),
        max_defer=spec.classes.max_defer,
        init=_init_tier(spec),
        breakers=MappingProxyType(
            {n: b for n, p in spec.pools.items() if (b := _breaker(n, p)) is not None}
        ),
    )
