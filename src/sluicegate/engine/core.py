"""The decision engine: identity -> rules -> costs -> one atomic store batch -> :class:`Decision`.

The engine imports no web framework. It turns a :class:`RequestContext` into bucket operations
using a per-(tenant, class, pool) plan that is computed once and cached, so the per-call work is a
few string joins and one store call.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass
from urllib.parse import quote

from sluicegate.clock import Clock, MonotonicClock
from sluicegate.engine.decision import Decision, Outcome, Reason, RequestContext
from sluicegate.policy.resolve import Axis, Plane, Policy, Rule
from sluicegate.stores.base import Batch, BucketOp, Reservation, SettleResult, Store

_SAFE_ID = re.compile(r"[A-Za-z0-9._\-]{1,128}")


def safe_id(value: str) -> str:
    """Make an identifier safe inside a key: no ``:``, ``{``, ``}`` or control characters, so a
    crafted session id cannot alias another bucket or move a key out of its tenant's slot."""
    if _SAFE_ID.fullmatch(value):
        return value
    return "%" + quote(value, safe="")[:256]


_TENANT, _AGENT, _SESSION, _POOL = range(4)
_PLANE_KIND = {
    Plane.TENANT: _TENANT,
    Plane.AGENT: _AGENT,
    Plane.SESSION: _SESSION,
    Plane.POOL: _POOL,
}


@dataclass(frozen=True, slots=True)
class _Plan:
    """Precomputed bucket templates for one (tenant, class, pool)."""

    rules: tuple[Rule, ...]
    kinds: tuple[int, ...]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    axes: tuple[Axis, ...]
    token_ops: tuple[int, ...]
    concurrency_ops: tuple[int, ...]
    has_session: tuple[bool, ...]
    max_wait: float
    class_name: str


def bucket_prefix(tenant: str) -> str:
    """Every key of a tenant starts with this; ``{tenant}`` is the Redis Cluster hash tag."""
    return f"sg:{{{safe_id(tenant)}}}:"


class Engine:
    """Decides allow / wait / refuse for one agent call across every limit that applies.

    ``Engine(policy, store, clock)``; the policy can be swapped at run time (``engine.policy =
    new``), atomically for all later decisions.
    """

    def __init__(self, policy: Policy, store: Store, clock: Clock | None = None) -> None:
        self._policy = policy
        self.store = store
        self.clock: Clock = clock or MonotonicClock()
        self._plans: dict[tuple[str, str, str | None], _Plan | None] = {}
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(5).hex()

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._plans = {}
        self._policy = policy

    def resolve_class(self, requested: str | None) -> tuple[str | None, str | None]:
        """``(class, warning)``; class is None when the policy rejects an unknown class."""
        policy = self._policy
        if requested is None or requested == "":
            return policy.default_class, None
        if requested in policy.classes:
            return requested, None
        if policy.reject_unknown_class:
            return None, f"unknown workload class {requested[:64]!r}"
        warning = f"unknown workload class {requested[:64]!r}; served as {policy.default_class!r}"
        return policy.default_class, warning

    def _plan(self, tenant: str, class_name: str, pool: str | None) -> _Plan | None:
        policy = self._policy
        rules = policy.rules_for(tenant, class_name)
        if rules is None:
            return None
        if pool is not None:
            rules = rules + policy.pools.get(pool, ())
        head = bucket_prefix(tenant)
        kinds, prefixes, suffixes = [], [], []
        for r in rules:
            kind = _PLANE_KIND[r.plane]
            scope = f"@{r.scope}" if r.scope else ""
            kinds.append(kind)
            if kind == _TENANT:
                prefixes.append(f"{head}t{scope}:{r.axis.value}")
            elif kind == _AGENT:
                prefixes.append(f"{head}a:")
            elif kind == _SESSION:
                prefixes.append(f"{head}s:")
            else:
                prefixes.append(f"sg:{{pool:{safe_id(r.pool or '')}}}:{r.axis.value}")
            suffixes.append(f"{scope}:{r.axis.value}")
        profile = policy.classes[class_name]
        return _Plan(
            rules=rules,
            kinds=tuple(kinds),
            prefixes=tuple(prefixes),
            suffixes=tuple(suffixes),
            axes=tuple(r.axis for r in rules),
            token_ops=tuple(i for i, r in enumerate(rules) if r.axis is Axis.TOKENS),
            concurrency_ops=tuple(i for i, r in enumerate(rules) if r.axis is Axis.CONCURRENCY),
            has_session=tuple(r.plane is Plane.SESSION for r in rules),
            max_wait=profile.max_wait,
            class_name=class_name,
        )

    def _new_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    async def decide(self, ctx: RequestContext) -> Decision:
        """Check and consume every bucket that applies to ``ctx``, atomically."""
        class_name, warning = self.resolve_class(ctx.workload_class)
        if class_name is None:
            return self._refusal(Reason.UNKNOWN_CLASS, ctx.workload_class or "", warning)
        plan_key = (ctx.tenant, class_name, ctx.pool)
        plans = self._plans
        plan = plans.get(plan_key)
        if plan is None:
            if plan_key in plans or (plan := self._plan(*plan_key)) is None:
                plans[plan_key] = None
                return self._refusal(
                    Reason.UNKNOWN_TENANT, class_name, f"tenant {ctx.tenant[:64]!r}"
                )
            if len(plans) < 100_000:
                plans[plan_key] = plan
        agent = safe_id(ctx.agent)
        session = safe_id(ctx.session) if ctx.session is not None else None
        tokens = float(ctx.tokens)
        units = ctx.cost_units
        ops: list[BucketOp] = []
        keys: list[str] = []
        costs: list[float] = []
        rules: list[Rule] = []
        skipped = False
        for i, kind in enumerate(plan.kinds):
            if kind == _TENANT or kind == _POOL:
                key = plan.prefixes[i]
            elif kind == _AGENT:
                key = f"{plan.prefixes[i]}{agent}{plan.suffixes[i]}"
            elif session is None:
                skipped = True
                continue
            else:
                key = f"{plan.prefixes[i]}{agent}:{session}{plan.suffixes[i]}"
            axis = plan.axes[i]
            if axis is Axis.REQUESTS or axis is Axis.CONCURRENCY:
                cost = 1.0
            elif axis is Axis.TOKENS:
                cost = tokens
            else:
                if units is None:
                    units = self._policy.cost_units(ctx.method, ctx.path)
                cost = units
            rule = plan.rules[i]
            ops.append(BucketOp(key, rule.limit, cost))
            keys.append(key)
            costs.append(cost)
            rules.append(rule)
        if skipped:
            token_ops = tuple(i for i, r in enumerate(rules) if r.axis is Axis.TOKENS)
            conc_ops = tuple(i for i, r in enumerate(rules) if r.axis is Axis.CONCURRENCY)
        else:
            token_ops, conc_ops = plan.token_ops, plan.concurrency_ops
        max_wait = plan.max_wait if ctx.max_wait is None else min(plan.max_wait, ctx.max_wait)
        decision_id = self._new_id()
        reservation = None
        if (token_ops and tokens > 0) or conc_ops:
            reservation = Reservation(
                decision_id, tokens, token_ops, conc_ops, self._policy.settle_ttl
            )
        result = await self.store.apply(Batch(tuple(ops), max_wait, reservation), self.clock.now())
        if result.allowed:
            outcome = Outcome.WAIT if result.delay > 0 else Outcome.ALLOW
            return Decision(
                decision_id, outcome, Reason.OK, result.delay, None, class_name,
                tuple(rules), tuple(keys), tuple(costs), result.buckets,
                tokens if reservation is not None else 0.0, warning,
            )  # fmt: skip
        retry = 0.0
        reason = Reason.RATE_LIMITED
        for res in result.buckets:
            if not res.allowed and res.retry_after > retry:
                retry = res.retry_after
        if math.isinf(retry):
            reason = Reason.COST_EXCEEDS_CAPACITY
        return Decision(
            decision_id, Outcome.REFUSE, reason, 0.0, retry, class_name,
            tuple(rules), tuple(keys), tuple(costs), result.buckets, 0.0, warning,
        )  # fmt: skip

    def _refusal(self, reason: Reason, class_name: str, warning: str | None) -> Decision:
        return Decision(
            self._new_id(), Outcome.REFUSE, reason, 0.0, math.inf, class_name,
            (), (), (), (), 0.0, warning,
        )  # fmt: skip

    async def settle(self, decision_id: str, actual_tokens: float) -> SettleResult:
        """Reconcile a decision's token reservation with the upstream's reported usage and
        release its concurrency slots. Idempotent per decision id."""
        if actual_tokens < 0 or not math.isfinite(actual_tokens):
            raise ValueError("actual_tokens must be a finite, non-negative number")
        return await self.store.settle(decision_id, float(actual_tokens), self.clock.now())
