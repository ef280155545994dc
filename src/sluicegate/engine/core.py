"""The decision engine: identity -> rules -> costs -> one atomic store batch -> :class:`Decision`.

The engine imports no web framework. Everything that depends only on (tenant, class, pool,
whether a session is present) is computed once into a cached :class:`_Plan`: the rules, their
store limits, key fragments, cost selectors and the static part of the headers. Per call, the
engine only joins key strings, picks costs and makes one store call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sluicegate.clock import Clock, MonotonicClock
from sluicegate.engine.decision import Decision, Outcome, Reason, RequestContext
from sluicegate.engine.init_tokens import verify_token
from sluicegate.errors import StoreError
from sluicegate.headers import header_plan
from sluicegate.policy.resolve import (
    SHARE_COUNTER_LIMIT,
    AdaptiveBurst,
    Axis,
    Plane,
    Policy,
    PoolBreaker,
    Rule,
)
from sluicegate.stores.base import (
    Algorithm,
    Batch,
    BatchResult,
    Limit,
    Reservation,
    SettleResult,
    Store,
)

_logger = logging.getLogger("sluicegate.alerts")


def _log_alert(event: dict[str, Any]) -> None:
    """Default alert sink: one structured log line (adapters add webhooks and metrics)."""
    _logger.warning("alert %s", json.dumps(event, sort_keys=True))


_SAFE_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")
_PLAN_CACHE_MAX = 100_000
#: How long a replica trusts what it last read of an agent's scale event: an init-tier call
#: reads the store at most this often per agent, so a new event reaches every replica within
#: this time and an instance's init calls cost no extra round trip.
SCALE_EVENT_CACHE_TTL = 1.0
#: Bounds of a scale event (``Engine.add_scale_event``).
MAX_SCALE_INSTANCES = 10_000
MAX_SCALE_WINDOW = 3600.0
#: Demand counters this replica remembers for adaptive bursts (oldest forgotten first; a
#: forgotten caller starts again from ``min`` for one call).
_DEMAND_CACHE_MAX = 100_000


def safe_id(value: str) -> str:
    """Make an identifier safe inside a key: no ``:``, ``{``, ``}`` or control characters, so a
    crafted session id cannot alias another bucket or move a key out of its tenant's slot.
    Safe ids pass unchanged; others are percent-encoded (``%`` never appears in a safe id, so
    encoded and plain ids cannot collide); very long ones are hashed."""
    if _SAFE_ID.fullmatch(value):
        return value
    if len(value) > 128:
        return "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return "%" + quote(value, safe="")


# Plane kinds and cost selectors as small ints: enum attribute access is slow on the hot path.
_TENANT, _AGENT, _SESSION, _POOL, _TRACE = range(5)
_PLANE_KIND = {
    Plane.TENANT: _TENANT,
    Plane.AGENT: _AGENT,
    Plane.SESSION: _SESSION,
    Plane.POOL: _POOL,
    Plane.TRACE: _TRACE,
}
_ONE, _TOKENS, _UNITS, _RETRY, _SLOT, _ZERO = range(6)
_COST_KIND = {
    Axis.REQUESTS: _ONE,
    Axis.CONCURRENCY: _SLOT,
    Axis.TOKENS: _TOKENS,
    Axis.COST: _UNITS,
    Axis.RETRIES: _RETRY,
    Axis.SHARE: _ONE,
}


@dataclass(frozen=True, slots=True)
class _Plan:
    """Precomputed bucket templates for one (tenant, class, pool, has-session)."""

    rules: tuple[Rule, ...]
    limits: tuple[Limit, ...]
    kinds: tuple[int, ...]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    cost_kinds: tuple[int, ...]
    uses_units: bool
    token_ops: tuple[int, ...]
    concurrency_ops: tuple[int, ...]
    max_wait: float
    class_name: str
    headers: Any
    id_prefix: str
    trace_prefix: str
    #: Index of the retry-budget bucket, and of the breaker's (tenant share, pool total, trip).
    budget_idx: int | None = None
    breaker_idx: tuple[int, int, int] | None = None
    breaker: PoolBreaker | None = None
    shadow: _Plan | None = None
    #: Adaptive-burst limits: (index of the limit, index of its demand counter, its settings).
    adaptive: tuple[tuple[int, int, AdaptiveBurst], ...] = ()
    #: ``(kind, prefix, suffix)`` per bucket: what :func:`_keys_and_costs` joins.
    key_parts: tuple[tuple[int, str, str], ...] = ()


_EMPTY_RESULT = BatchResult(True, 0.0, (), (), ())


def _keys_and_costs(
    plan: _Plan,
    agent: str,
    agent_session: str,
    tokens: float,
    units: float,
    retry: float = 0.0,
    hits: float = 1.0,
) -> tuple[list[str], list[float]]:
    """The bucket keys and costs of one call under ``plan``. ``retry`` is the retry-budget
    cost: 1 for a retry, minus the deposit for an original call; ``hits`` weighs requests and
    cost units (``units`` is already weighted)."""
    # Indexed by the cost kinds _ONE, _TOKENS, _UNITS, _RETRY, _SLOT, _ZERO.
    values = (hits, tokens, units, retry, 1.0 if hits else 0.0, 0.0)
    keys = [
        prefix if kind == _TENANT or kind == _POOL
        else prefix + agent + suffix if kind == _AGENT
        else prefix + agent_session + suffix
        for kind, prefix, suffix in plan.key_parts
    ]  # fmt: skip
    return keys, [values[k] for k in plan.cost_kinds]


def _sync_apply(store: Store) -> Callable[[Batch, float], BatchResult] | None:
    """A store's synchronous ``apply`` when it has one (the memory store: its ``apply`` never
    suspends), so the hot path skips creating and driving a coroutine per decision."""
    apply_sync = getattr(store, "apply_sync", None)
    return apply_sync if callable(apply_sync) else None


def bucket_prefix(tenant: str) -> str:
    """Every key of a tenant starts with this; ``{tenant}`` is the Redis Cluster hash tag."""
    return f"sg:{{{safe_id(tenant)}}}:"


#: Scale events are shared values ``sg:scale:{tenant}:agent`` (one prefix lists them all; the
#: hash tag keeps each in its tenant's cluster slot).
SCALE_PREFIX = "sg:scale:"


def _scale_key(tenant: str, agent: str) -> str:
    return f"{SCALE_PREFIX}{{{safe_id(tenant)}}}:{safe_id(agent)}"


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """An announced fleet start: ``instances`` new instances of ``agent`` during the next
    ``window`` seconds. While it lasts, the init tier's aggregate burst of that agent (and the
    tier's tenant allowance, if any) holds at least ``instances`` times the per-instance init
    burst, so the whole fleet's start-up gets through at once; what it took beyond the policy's
    own burst is paid back afterwards at the policy's rate (see ``InitTier.prewarmed``).
    Times are wall-clock seconds, because every replica must agree on them."""

    tenant: str
    agent: str
    instances: int
    window: float
    created: float
    until: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScaleEvent | None:
        """The event in ``text``, or None when it is not one (never raises on bad data)."""
        try:
            doc = json.loads(text)
            return cls(
                str(doc["tenant"]), str(doc["agent"]), int(doc["instances"]),
                float(doc["window"]), float(doc["created"]), float(doc["until"]),
            )  # fmt: skip
        except (ValueError, TypeError, KeyError):
            return None


class Engine:
    """Decides allow / wait / refuse for one agent call across every limit that applies.

    ``Engine(policy, store, clock)``; the policy can be swapped at run time (``engine.policy =
    new``), atomically for all later decisions.
    """

    def __init__(
        self,
        policy: Policy,
        store: Store,
        clock: Clock | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        on_alert: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._policy = policy
        self._store = store
        self._apply_now = _sync_apply(store)
        self.clock: Clock = clock or MonotonicClock()
        #: Wall-clock seconds, only for init tokens' issue and expiry times.
        self.wall_clock = wall_clock
        self._plans: dict[tuple[str, str, str | None, bool, bool, bool, int], _Plan | None] = {}
        #: Tenant breakers this replica has seen open: (tenant, pool) -> open until (clock).
        self._held: dict[tuple[str, str], float] = {}
        #: Adaptive bursts: demand counter key -> units admitted in its window, as last seen.
        self._demand: dict[str, float] = {}
        #: Scale events as last read: (tenant, agent) -> (read at, event or None).
        self._scale: dict[tuple[str, str], tuple[float, ScaleEvent | None]] = {}
        self.on_alert: Callable[[dict[str, Any]], None] = on_alert or _log_alert
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(5).hex()

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._policy = policy
        self._plans = {}

    @property
    def store(self) -> Store:
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        self._store = store
        self._apply_now = _sync_apply(store)

    def resolve_class(self, requested: str | None) -> tuple[str | None, str | None]:
        """``(class, warning)``; class is None when the policy rejects an unknown class."""
        policy = self._policy
        if not requested:
            return policy.default_class, None
        if requested in policy.classes:
            return requested, None
        if policy.reject_unknown_class:
            return None, f"unknown workload class {requested[:64]!r}"
        warning = f"unknown workload class {requested[:64]!r}; served as {policy.default_class!r}"
        return policy.default_class, warning

    def _plan(
        self,
        tenant: str,
        class_name: str,
        pool: str | None,
        has_session: bool,
        init: bool,
        held: bool,
        scale: int = 0,
    ) -> _Plan | None:
        policy = self._policy
        rules = policy.rules_for(tenant, class_name)
        if rules is None:
            return None
        if init and policy.init is not None:
            # Cold-start tier: the instance's init limits (keyed like a session: agent then
            # instance) and the agent's aggregate init limits replace the agent and session
            # planes; the tenant plane holds, or the tier's own tenant allowance replaces it. A
            # scale event of ``scale`` instances raises the aggregate.
            tier = policy.init
            tenant_rules = tier.tenant_rules
            aggregate = tier.aggregate_rules
            if scale:
                aggregate = tier.prewarmed(aggregate, scale)
                if tenant_rules is not None:
                    tenant_rules = tier.prewarmed(tenant_rules, scale)
            if tenant_rules is None:  # no allowance of the tier's own: the tenant plane holds
                tenant_rules = tuple(r for r in rules if r.plane is Plane.TENANT)
            rules = tenant_rules + aggregate + policy.init.instance_rules
        elif not has_session:
            rules = tuple(r for r in rules if r.plane is not Plane.SESSION)
        breaker = policy.breakers.get(pool) if pool is not None else None
        if pool is not None:
            rules = rules + policy.pools.get(pool, ())
        if held and breaker is not None:
            rules = rules + (breaker.floor_rule,)  # the tripped tenant is held to the floor
        shadow_rules = tuple(r for r in rules if r.shadow)
        shadow = None
        if shadow_rules:
            rules = tuple(r for r in rules if not r.shadow)
            shadow_rules += tuple(r.demand_rule() for r in shadow_rules if r.adaptive)
            shadow = self._build_plan(tenant, class_name, shadow_rules, None)
        # Adaptive bursts' demand counters: after the limits (not limits themselves).
        rules += tuple(r.demand_rule() for r in rules if r.adaptive is not None)
        if policy.retry_budget is not None:
            # After the rate limits: the header plan renders it as its own header.
            rules = rules + (policy.retry_budget.rule,)
        if breaker is not None:
            rules = rules + (breaker.tenant_counter, breaker.pool_counter, breaker.trip)
        plan = self._build_plan(tenant, class_name, rules, shadow)
        budget_idx = next((i for i, r in enumerate(rules) if r.axis is Axis.RETRIES), None)
        breaker_idx = (len(rules) - 3, len(rules) - 2, len(rules) - 1) if breaker else None
        return dataclasses.replace(
            plan, budget_idx=budget_idx, breaker_idx=breaker_idx, breaker=breaker
        )

    def _build_plan(
        self, tenant: str, class_name: str, rules: tuple[Rule, ...], shadow: _Plan | None
    ) -> _Plan:
        policy = self._policy
        head = bucket_prefix(tenant)
        prefixes, suffixes = [], []
        for r in rules:
            scope = f"@{r.scope}" if r.scope else ""
            kind = _PLANE_KIND[r.plane]
            axis = r.key_axis
            if kind == _TENANT:
                prefixes.append(f"{head}t{scope}:{axis}")
            elif kind == _TRACE:
                prefixes.append(f"{head}x:")
            elif kind == _AGENT:
                prefixes.append(f"{head}a:")
            elif kind == _SESSION:
                prefixes.append(f"{head}s:")
            else:
                prefixes.append(f"sg:{{pool:{safe_id(r.pool or '')}}}:{axis}")
            suffixes.append(f"{scope}:{axis}")
        # The breaker's trip bucket is only checked (cost 0) on every call; it is consumed by
        # a separate call when the breaker opens.
        # A demand counter costs what its adaptive limit costs.
        cost_kinds = tuple(
            _ZERO if r.axis is Axis.SHARE and r.limit.algorithm is Algorithm.GCRA
            else _COST_KIND[r.adaptive.axis] if r.axis is Axis.DEMAND and r.adaptive
            else _COST_KIND[r.axis]
            for r in rules
        )  # fmt: skip
        limit_idx = [i for i, r in enumerate(rules) if r.adaptive and r.axis is not Axis.DEMAND]
        counter_idx = [i for i, r in enumerate(rules) if r.axis is Axis.DEMAND]
        adaptive = tuple(
            (i, j, a)
            for i, j in zip(limit_idx, counter_idx, strict=True)
            if (a := rules[i].adaptive) is not None
        )
        kinds = tuple(_PLANE_KIND[r.plane] for r in rules)
        return _Plan(
            rules=rules,
            limits=tuple(r.limit for r in rules),
            kinds=kinds,
            prefixes=tuple(prefixes),
            suffixes=tuple(suffixes),
            cost_kinds=cost_kinds,
            uses_units=_UNITS in cost_kinds,
            token_ops=tuple(i for i, r in enumerate(rules) if r.axis is Axis.TOKENS),
            concurrency_ops=tuple(i for i, r in enumerate(rules) if r.axis is Axis.CONCURRENCY),
            # The store defers at most max_defer (see ClassesSpec.max_defer).
            max_wait=min(policy.classes[class_name].max_wait, policy.max_defer),
            class_name=class_name,
            headers=header_plan(rules),
            # Decision ids carry the tenant's hash tag, so on Redis Cluster the reservation
            # record lands in the same slot as the tenant's buckets (one script call).
            id_prefix=f"{{{safe_id(tenant)}}}{self._id_prefix}-",
            trace_prefix=f"{head}x:",
            shadow=shadow,
            adaptive=adaptive,
            key_parts=tuple(zip(kinds, prefixes, suffixes, strict=True)),
        )

    def _new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    async def aclose(self) -> None:
        """Close the store."""
        await self.store.aclose()

    async def _init_instance(self, ctx: RequestContext) -> tuple[str | None, str]:
        """The instance id when ``ctx`` carries a valid init token still inside its window,
        else ``(None, reason)``. The first use is recorded atomically in the store."""
        tier = self._policy.init
        assert tier is not None and ctx.init_token is not None
        claims, why = verify_token(
            ctx.init_token, tier.secrets, now=self.wall_clock(), max_ttl=tier.max_token_ttl
        )
        if claims is None:
            return None, why
        if claims.tenant != ctx.tenant or claims.agent != ctx.agent:
            return None, "other_identity"
        key = f"{bucket_prefix(ctx.tenant)}init:{safe_id(ctx.agent)}:{safe_id(claims.instance)}"
        try:
            marker = await self.store.apply(Batch([key], [tier.marker], [1.0]), self.clock.now())
        except StoreError:
            return None, "store_unavailable"  # the decision itself will report the outage
        if marker.allowed:
            return claims.instance, "first_use"
        # Used before: tat - now = (first use + max_token_ttl) - now.
        if marker.reset[0] > tier.max_token_ttl - tier.window:
            return claims.instance, "in_window"
        return None, "window_over"

    async def decide(self, ctx: RequestContext) -> Decision:
        """Check and consume every bucket that applies to ``ctx``, atomically."""
        class_name, warning = self.resolve_class(ctx.workload_class)
        if class_name is None:
            return self._refusal(Reason.UNKNOWN_CLASS, ctx.workload_class or "", warning)
        session = ctx.session
        init = False
        if ctx.init_token is not None and self._policy.init is not None:
            instance, why = await self._init_instance(ctx)
            strict = self._policy.init.strict
            if instance is None and strict and why not in ("window_over", "store_unavailable"):
                return self._refusal(Reason.INVALID_INIT_TOKEN, class_name, f"init token: {why}")
            if instance is not None:
                init, session = True, instance  # the instance takes the session's place
        held = False
        if ctx.pool is not None and self._held:
            until = self._held.get((ctx.tenant, ctx.pool))
            held = until is not None and until > self.clock.now()
        scale = 0
        if init:
            event = await self._scale_event(ctx.tenant, ctx.agent)
            scale = event.instances if event is not None else 0
        plan_key = (ctx.tenant, class_name, ctx.pool, session is not None, init, held, scale)
        plans = self._plans
        plan = plans.get(plan_key)
        if plan is None:
            if plan_key in plans or (plan := self._plan(*plan_key)) is None:
                if len(plans) < _PLAN_CACHE_MAX:
                    plans[plan_key] = None
                return self._refusal(
                    Reason.UNKNOWN_TENANT, class_name, f"tenant {ctx.tenant[:64]!r}"
                )
            if len(plans) < _PLAN_CACHE_MAX:
                plans[plan_key] = plan
        agent = safe_id(ctx.agent)
        agent_session = f"{agent}:{safe_id(session)}" if session is not None else agent
        tokens = float(ctx.tokens)
        units = 1.0
        if plan.uses_units or (plan.shadow is not None and plan.shadow.uses_units):
            units = (
                ctx.cost_units
                if ctx.cost_units is not None
                else self._policy.cost_units(ctx.method, ctx.path)
            )
        budget = self._policy.retry_budget
        retry = 0.0
        rules = plan.rules
        if budget is not None:
            retry = 1.0 if ctx.retry_attempt > 0 else -budget.deposit
        hits = float(ctx.hits)
        units *= hits
        keys, costs = _keys_and_costs(plan, agent, agent_session, tokens, units, retry, hits)
        limits: tuple[Limit, ...] = plan.limits
        if budget is not None and budget.trace_rule is not None and retry > 0 and ctx.trace_id:
            # A retry inside a pipeline also counts against the pipeline's cap.
            keys.append(f"{plan.trace_prefix}{safe_id(ctx.trace_id)}:retries")
            costs.append(1.0)
            limits = limits + (budget.trace_rule.limit,)
            rules = rules + (budget.trace_rule,)
        bursts: tuple[tuple[str, float], ...] = ()
        if plan.adaptive:
            limits, bursts = self._adaptive_limits(plan, keys, limits)
        max_wait = plan.max_wait if ctx.max_wait is None else min(plan.max_wait, ctx.max_wait)
        decision_id = f"{plan.id_prefix}{next(self._ids):x}"
        reservation = None
        if (plan.token_ops and tokens > 0) or plan.concurrency_ops:
            reservation = Reservation(
                decision_id, tokens, plan.token_ops, plan.concurrency_ops, self._policy.settle_ttl
            )
        try:
            if keys:
                batch = Batch(keys, limits, costs, max_wait, reservation)
                if self._apply_now is not None:  # the memory store: no coroutine needed
                    result = self._apply_now(batch, self.clock.now())
                else:
                    result = await self._store.apply(batch, self.clock.now())
            else:
                result = _EMPTY_RESULT
            if plan.adaptive:
                self._learn_demand(plan, keys, costs, result)
            if result.allowed:
                decision = Decision(
                    decision_id, Outcome.WAIT if result.delay > 0 else Outcome.ALLOW, Reason.OK,
                    result.delay, None, class_name, rules, keys, costs, result,
                    tokens if reservation is not None else 0.0, warning, plan.headers,
                )  # fmt: skip
                decision.init_tier = init
                decision.bursts = bursts
                if plan.breaker is not None:
                    await self._watch_breaker(ctx.tenant, plan, keys, result)
                if plan.shadow is not None:
                    await self._shadow(
                        decision, plan.shadow, agent, agent_session, tokens, units, hits
                    )
                return decision
        except StoreError as exc:
            # The store (or its fail_closed wrapper) could not decide: refuse, say so, and let
            # the adapter render 503 with a short Retry-After.
            return Decision(
                decision_id, Outcome.REFUSE, Reason.STORE_UNAVAILABLE, 0.0, 1.0, class_name,
                rules, keys, costs, None, 0.0, str(exc), plan.headers,
            )  # fmt: skip
        retry_after = max(result.retry_after)
        reason = Reason.COST_EXCEEDS_CAPACITY if math.isinf(retry_after) else Reason.RATE_LIMITED
        if budget is not None and retry > 0:
            for rule, wait in zip(rules, result.retry_after, strict=True):
                if wait > 0 and rule.axis is Axis.RETRIES:
                    reason = Reason.RETRY_BUDGET_EXHAUSTED
        decision = Decision(
            decision_id, Outcome.REFUSE, reason, 0.0, retry_after, class_name,
            rules, keys, costs, result, 0.0, warning, plan.headers,
        )  # fmt: skip
        decision.init_tier = init
        decision.bursts = bursts
        if plan.breaker is not None:
            self._note_breaker(ctx.tenant, plan, result)
        if reason is Reason.RATE_LIMITED and budget is not None and retry > 0:
            # A retry the limits refused was still sent: it spends the retry budget (as in
            # Finagle, which withdraws per retry attempted), so a storm of refused retries soon
            # gets ``retry_budget_exhausted`` and ``x-should-retry: false``.
            i = plan.budget_idx
            assert i is not None
            try:
                await self.store.apply(Batch([keys[i]], [plan.limits[i]], [1.0]), self.clock.now())
            except StoreError:
                pass  # best effort: the refusal itself stands
        if self._policy.shadow:
            # A shadowed policy reports what it would have done, and lets the call go.
            decision.outcome = Outcome.ALLOW
            decision.retry_after = None
            decision.shadow_refused = True
            decision.shadow_buckets = tuple(b.name for b in decision.refusing)
        return decision

    async def add_scale_event(
        self, tenant: str, agent: str, instances: int, window: float | None = None
    ) -> ScaleEvent:
        """Announce that ``instances`` instances of ``agent`` start within ``window`` seconds
        (default: the init tier's window): pre-warm the agent's aggregate init budget for them
        until the window ends, in the store (so every replica applies it), and alert. A new
        event for the same agent replaces the previous one. ``ValueError`` says what is wrong
        with a request; ``StoreError`` that the store could not record it."""
        tier = self._policy.init
        if tier is None:
            raise ValueError("the policy has no init tier: a scale event pre-warms its budget")
        if not tier.aggregate_rules and tier.tenant_rules is None:
            raise ValueError(
                "the init tier has no aggregate or tenant limits: there is nothing to pre-warm"
            )
        if self._policy.rules_for(tenant, self._policy.default_class) is None:
            raise ValueError(f"unknown tenant {tenant[:64]!r}")
        if not agent or len(agent) > 256:
            raise ValueError("agent must be a non-empty string of at most 256 characters")
        if not 1 <= instances <= MAX_SCALE_INSTANCES:
            raise ValueError(f"instances must be between 1 and {MAX_SCALE_INSTANCES}")
        window = tier.window if window is None else float(window)
        if not 1.0 <= window <= MAX_SCALE_WINDOW:  # also False for NaN
            raise ValueError(f"window must be between 1 s and {MAX_SCALE_WINDOW:g} s")
        now = self.wall_clock()
        event = ScaleEvent(tenant, agent, instances, float(window), now, now + window)
        # The store runs on the engine's clock (the memory store sweeps its buckets by it);
        # the event's own times are wall-clock, which every replica shares.
        key = _scale_key(tenant, agent)
        await self.store.put_value(key, event.to_json(), window, self.clock.now())
        self._scale[(tenant, agent)] = (self.clock.now(), event)
        self.on_alert(
            {
                "event": "scale_event",
                "tenant": tenant,
                "agent": agent,
                "instances": instances,
                "window": window,
                "action": f"init aggregate pre-warmed for {instances} instances for {window:g}s",
            }
        )
        return event

    async def end_scale_event(self, tenant: str, agent: str) -> ScaleEvent | None:
        """End the agent's active scale event early (the fleet is up, or it was announced by
        mistake); the ended event, or None if there was none. Written as the same event with
        ``until`` = now, so every replica sees it over within ``SCALE_EVENT_CACHE_TTL``."""
        key = _scale_key(tenant, agent)
        text = await self.store.get_value(key, self.clock.now())
        event = ScaleEvent.from_json(text) if text is not None else None
        now = self.wall_clock()
        if event is None or event.until <= now:
            return None
        ended = dataclasses.replace(event, until=now)
        await self.store.put_value(key, ended.to_json(), SCALE_EVENT_CACHE_TTL, self.clock.now())
        self._scale[(tenant, agent)] = (self.clock.now(), ended)
        self.on_alert(
            {
                "event": "scale_event_ended",
                "tenant": tenant,
                "agent": agent,
                "instances": event.instances,
                "action": "init aggregate back to the policy's burst",
            }
        )
        return ended

    async def scale_events(self) -> list[ScaleEvent]:
        """The scale events still active, across every tenant (reads the store)."""
        now = self.wall_clock()
        values = await self.store.list_values(SCALE_PREFIX, self.clock.now())
        events = [e for v in values.values() if (e := ScaleEvent.from_json(v)) is not None]
        return sorted((e for e in events if e.until > now), key=lambda e: (e.tenant, e.agent))

    async def _scale_event(self, tenant: str, agent: str) -> ScaleEvent | None:
        """The agent's active scale event, read from the store at most once per
        ``SCALE_EVENT_CACHE_TTL``. While the store cannot answer (an error, or a degraded
        FailoverStore answering from its in-process fallback, which never saw the event), the
        event this replica last read stays in force until its end; one it never read is not
        known (the init tier's own limits hold)."""
        key = (tenant, agent)
        now = self.clock.now()
        cached = self._scale.get(key)
        if cached is None or now - cached[0] >= SCALE_EVENT_CACHE_TTL:
            known = cached[1] if cached is not None else None
            event = None
            try:
                text = await self.store.get_value(_scale_key(tenant, agent), now)
            except StoreError:
                event = known
            else:
                if text is not None:
                    event = ScaleEvent.from_json(text)
                elif known is not None and not getattr(self._store, "healthy", True):
                    event = known
            if len(self._scale) >= _DEMAND_CACHE_MAX:
                self._scale.clear()
            cached = self._scale[key] = (now, event)
        event = cached[1]
        if event is None or event.until <= self.wall_clock():
            return None
        return event

    def status(self) -> dict[str, Any]:
        """What this replica knows of the agentic controls, for the admin status: the policy's
        adaptive-burst limits (per tier and tenant), how many callers' demand it tracks, and the
        tenant breakers it holds open."""
        policy = self._policy
        adaptive = []
        for kind, table in (("tier", policy.tier_rules), ("tenant", policy.tenant_rules)):
            for name, rules in sorted(table.items()):
                for rule in rules:
                    if (a := rule.adaptive) is not None:
                        adaptive.append(
                            {kind: name, "limit": rule.name, "rate": str(rule.rate),
                             "window": a.window, "factor": a.factor, "min": a.min, "max": a.max}
                        )  # fmt: skip
        return {
            "adaptive_bursts": adaptive,
            "adaptive_callers_tracked": len(self._demand),
            "breakers_open": [
                {"tenant": t, "pool": p, "closes_in": round(left, 3)}
                for (t, p), left in sorted(self.open_breakers().items())
            ],
            "retry_budget": self._policy.retry_budget is not None,
            "init_tier": self._policy.init is not None,
        }

    def open_breakers(self) -> dict[tuple[str, str], float]:
        """``(tenant, pool) -> seconds until it closes`` for the tenant breakers this replica
        knows to be open (it learns of a trip on another replica from its next call)."""
        now = self.clock.now()
        return {key: until - now for key, until in self._held.items() if until > now}

    def _adaptive_limits(
        self, plan: _Plan, keys: list[str], limits: tuple[Limit, ...]
    ) -> tuple[tuple[Limit, ...], tuple[tuple[str, float], ...]]:
        """The limits of this call with each adaptive burst sized from its caller's demand as
        this replica last saw it (the counter lives in the store, so every replica converges on
        it; the burst lags the demand by one call). GCRA keeps no capacity in its state, so a
        burst may change from call to call without touching the bucket."""
        out = list(limits)
        bursts = []
        demand = self._demand
        for i, j, adaptive in plan.adaptive:
            burst = adaptive.capacity(demand.get(keys[j], 0.0))
            limit = out[i]
            out[i] = Limit(limit.algorithm, limit.period, burst)
            bursts.append((plan.rules[i].name, burst))
        return tuple(out), tuple(bursts)

    def _learn_demand(
        self, plan: _Plan, keys: list[str], costs: list[float], result: BatchResult
    ) -> None:
        """Remember each demand counter's value after this call (a refused call reports its
        buckets as if it had consumed, though nothing was written: take its cost back off)."""
        demand = self._demand
        for _, j, _ in plan.adaptive:
            count = SHARE_COUNTER_LIMIT - result.remaining[j]
            if not result.allowed:
                count -= costs[j]
            key = keys[j]
            if demand.pop(key, None) is None and len(demand) >= _DEMAND_CACHE_MAX:
                del demand[next(iter(demand))]  # forget the least recently seen caller
            demand[key] = max(0.0, count)

    def _note_breaker(self, tenant: str, plan: _Plan, result: BatchResult) -> bool:
        """Learn the tenant breaker's state from the zero-cost trip check; True when open."""
        assert plan.breaker is not None and plan.breaker_idx is not None
        open_for = result.reset[plan.breaker_idx[2]]
        key = (tenant, plan.breaker.pool)
        if open_for > 0:
            self._held[key] = self.clock.now() + open_for
            return True
        if self._held.pop(key, None) is not None:
            _logger.info("tenant breaker closed tenant=%s pool=%s", tenant, plan.breaker.pool)
        return False

    async def _watch_breaker(
        self, tenant: str, plan: _Plan, keys: list[str], result: BatchResult
    ) -> None:
        """After an admitted pool call: open the tenant's breaker when its share is too high."""
        breaker = plan.breaker
        assert breaker is not None and plan.breaker_idx is not None
        if self._note_breaker(tenant, plan, result):
            return
        t_i, p_i, trip_i = plan.breaker_idx
        used = SHARE_COUNTER_LIMIT - result.remaining[t_i]
        total = SHARE_COUNTER_LIMIT - result.remaining[p_i]
        if total < breaker.min_volume or used <= breaker.share * total or used >= total:
            return  # not under pressure, not too much, or alone: nobody to protect
        # Only one call, on any replica, consumes the one-unit trip bucket: it alone alerts.
        trip = await self.store.apply(
            Batch([keys[trip_i]], [plan.limits[trip_i]], [1.0]), self.clock.now()
        )
        if trip.allowed:
            self._held[(tenant, breaker.pool)] = self.clock.now() + breaker.cooldown
            self.on_alert(
                {
                    "event": "tenant_breaker_open",
                    "tenant": tenant,
                    "pool": breaker.pool,
                    "share": round(used / total, 4),
                    "threshold": breaker.share,
                    "action": f"held to {breaker.floor_rule.rate} for {breaker.cooldown:g}s",
                }
            )

    async def _shadow(
        self,
        decision: Decision,
        plan: _Plan,
        agent: str,
        agent_session: str,
        tokens: float,
        units: float,
        hits: float,
    ) -> None:
        """Apply the shadow limits of an admitted call: they consume like real limits (so they
        show what enforcing them would do) but a refusal only marks the decision."""
        keys, costs = _keys_and_costs(plan, agent, agent_session, tokens, units, 0.0, hits)
        limits = plan.limits
        if plan.adaptive:
            limits, _ = self._adaptive_limits(plan, keys, limits)
        result = await self.store.apply(Batch(keys, limits, costs), self.clock.now())
        if plan.adaptive:
            self._learn_demand(plan, keys, costs, result)
        if not result.allowed:
            decision.shadow_refused = True
            decision.shadow_buckets = tuple(
                rule.name
                for rule, retry in zip(plan.rules, result.retry_after, strict=True)
                if retry > 0
            )

    def _refusal(self, reason: Reason, class_name: str, warning: str | None) -> Decision:
        return Decision(
            self._new_id(), Outcome.REFUSE, reason, 0.0, math.inf, class_name,
            (), (), (), None, 0.0, warning, None,
        )  # fmt: skip

    async def settle(self, decision_id: str, actual_tokens: float) -> SettleResult:
        """Reconcile a decision's token reservation with the upstream's reported usage and
        release its concurrency slots. Idempotent per decision id."""
        if actual_tokens < 0 or not math.isfinite(actual_tokens):
            raise ValueError("actual_tokens must be a finite, non-negative number")
        return await self.store.settle(decision_id, float(actual_tokens), self.clock.now())
