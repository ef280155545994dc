"""What the engine is asked (:class:`RequestContext`) and what it answers (:class:`Decision`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from sluicegate.policy.resolve import Axis, Plane, Rule
from sluicegate.stores.base import BatchResult


class Outcome(StrEnum):
    """``allow``: go now; ``wait``: go after ``Decision.delay`` (the slot is reserved);
    ``refuse``: do not go; come back after ``Decision.retry_after``."""

    ALLOW = "allow"
    WAIT = "wait"
    REFUSE = "refuse"


class Reason(StrEnum):
    OK = "ok"
    RATE_LIMITED = "rate_limited"
    COST_EXCEEDS_CAPACITY = "cost_exceeds_capacity"
    UNKNOWN_TENANT = "unknown_tenant"
    UNKNOWN_CLASS = "unknown_class"
    STORE_UNAVAILABLE = "store_unavailable"
    RETRY_BUDGET_EXHAUSTED = "retry_budget_exhausted"
    INVALID_INIT_TOKEN = "invalid_init_token"


@dataclass(slots=True)
class RequestContext:
    """One call, as identified by verified credentials (never by forgeable headers).

    ``tokens`` is the token reservation (estimated prompt + reserved output); ``cost_units``
    overrides the policy's route/method cost table; ``max_wait`` caps the class's max wait.
    """

    tenant: str
    agent: str
    session: str | None = None
    workload_class: str | None = None
    tokens: float = 0.0
    cost_units: float | None = None
    method: str = "POST"
    path: str = "/"
    pool: str | None = None
    max_wait: float | None = None
    #: 0 for an original call; n for its n-th retry (``x-stainless-retry-count``,
    #: ``Retry-Attempt``, a repeated ``Idempotency-Key``).
    retry_attempt: int = 0
    #: Pipeline id (W3C ``traceparent`` trace id or ``X-Agent-Pipeline-Id``) for fan-out caps.
    trace_id: str | None = None
    #: Weight of the call on the requests and cost axes (Envoy's ``hits_addend``); 0 checks
    #: without consuming (and takes no concurrency slot). Tokens are given by ``tokens``.
    hits: float = 1.0
    #: The raw ``X-Agent-Init-Token`` of a starting instance (verified by the engine).
    init_token: str | None = None


class BucketReport(NamedTuple):
    """One bucket of a decision, for explanations, headers and logs."""

    rule: Rule
    key: str
    cost: float
    allowed: bool
    remaining: int
    reset: float
    retry_after: float

    @property
    def plane(self) -> Plane:
        return self.rule.plane

    @property
    def axis(self) -> Axis:
        return self.rule.axis

    @property
    def name(self) -> str:
        return self.rule.name


@dataclass(slots=True)
class Decision:
    """The engine's answer. Bucket details are kept as the store returned them (columns) and
    expanded into :class:`BucketReport` only when asked, so the hot path allocates little.

    ``retry_after`` is None when allowed, ``math.inf`` when waiting can never help (a cost above
    a bucket's capacity, an unknown tenant). ``header_plan`` is the precomputed static part of
    the rate-limit headers (see :mod:`sluicegate.headers`).
    """

    id: str
    outcome: Outcome
    reason: Reason
    delay: float
    retry_after: float | None
    workload_class: str
    rules: tuple[Rule, ...]
    keys: Sequence[str]
    costs: Sequence[float]
    result: BatchResult | None
    reserved_tokens: float = 0.0
    warning: str | None = None
    header_plan: Any = None
    #: Shadow mode: True when a shadow policy or shadow limit *would* have refused this call
    #: (the call was admitted; ``reason`` keeps the would-be reason when the whole policy is
    #: shadowed), and the names of the buckets that would have refused.
    shadow_refused: bool = False
    shadow_buckets: tuple[str, ...] = ()
    #: True when the call was decided on the cold-start (init) tier.
    init_tier: bool = False
    #: ``(rule name, burst)`` of each adaptive-burst limit, as this call was checked.
    bursts: tuple[tuple[str, float], ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome is not Outcome.REFUSE

    @property
    def buckets(self) -> list[BucketReport]:
        if self.result is None:
            return []
        return [
            BucketReport(rule, key, cost, *res)
            for rule, key, cost, res in zip(
                self.rules, self.keys, self.costs, self.result.buckets, strict=True
            )
        ]

    @property
    def refusing(self) -> list[BucketReport]:
        """The buckets that refused (each named by plane, axis and limit)."""
        return [b for b in self.buckets if not b.allowed]

    def explain(self) -> str:
        """One line a human can act on."""
        if self.outcome is Outcome.ALLOW:
            if self.shadow_refused:
                return f"allowed (shadow: would refuse by {', '.join(self.shadow_buckets)})"
            return "allowed"
        if self.outcome is Outcome.WAIT:
            return f"allowed after waiting {self.delay:.3f}s"
        if self.reason in (
            Reason.UNKNOWN_TENANT,
            Reason.UNKNOWN_CLASS,
            Reason.STORE_UNAVAILABLE,
            Reason.INVALID_INIT_TOKEN,
        ):
            return f"refused: {self.reason.value}" + (f" ({self.warning})" if self.warning else "")
        parts = []
        bursts = dict(self.bursts)
        for b in self.refusing:
            limit = f"{b.rule.rate}" if b.rule.rate else f"{b.rule.capacity:g} in flight"
            burst = bursts.get(b.name, b.rule.capacity)
            parts.append(f"{b.name} (limit {limit}, burst {burst:g}, cost {b.cost:g})")
        when = (
            "never at this cost"
            if self.retry_after is None or math.isinf(self.retry_after)
            else f"retry after {self.retry_after:.3f}s"
        )
        return f"refused by {', '.join(parts)}; {when}"
