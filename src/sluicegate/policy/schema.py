"""The policy file's schema: pydantic models that mirror the YAML one to one.

Models only check shape and values; :mod:`sluicegate.policy.resolve` turns a validated
:class:`PolicySpec` into the frozen, precomputed :class:`~sluicegate.policy.resolve.Policy` the
engine runs on. Every model rejects unknown keys, so a typo is an error, never a silent no-op.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sluicegate.policy.gateway_schema import GatewaySettings, RouteSpec, UpstreamSpec
from sluicegate.policy.identity_schema import IdentitySpec
from sluicegate.policy.units import Rate, parse_count, parse_duration, parse_rate

RateField = Annotated[Rate, BeforeValidator(parse_rate)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Count = Annotated[float, BeforeValidator(parse_count), Field(gt=0)]

#: The identity planes, outermost first.
PLANES = ("tenant", "agent", "session")
#: The cost axes a plane can limit.
AXES = ("requests", "tokens", "cost")
AXIS_BURST_KEYS = (("requests", "burst"), ("tokens", "tokens_burst"), ("cost", "cost_burst"))
BUILTIN_CLASSES = ("realtime", "interactive", "batch")
#: Algorithms a rate axis may use (concurrency is its own plane key, not an axis algorithm).
AxisAlgorithm = Literal["gcra", "sliding_window", "fixed_window"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _axis_shorthand(value: Any) -> Any:
    """``requests: 600/min`` is shorthand for ``requests: {rate: 600/min}``."""
    if isinstance(value, str):
        return {"rate": value}
    return value


class AdaptiveBurstSpec(StrictModel):
    """A burst capacity that follows demand: ``factor`` x the sliding average demand (units
    admitted per second over the last ``window``), clamped to ``[min, max]``.

    ``factor`` is therefore in seconds: how many seconds of the caller's average demand the
    bucket holds at once. A think-then-act agent averaging 5 calls/s in bursts of 30 needs a
    factor of at least 6. Only admitted units count as demand, so a refused flood (or a retry
    storm) cannot inflate the burst, and ``max`` bounds it whatever the caller does. Until
    the demand is known (a new caller, a restarted replica) the burst is ``min``. The rate
    itself never changes: a larger burst lets a bursty caller spend its rate sooner, not more.
    """

    window: Annotated[float, BeforeValidator(parse_duration), Field(ge=60, le=300)] = 120.0
    factor: Annotated[float, Field(gt=0)] = 10.0
    min: Count
    max: Count

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveBurstSpec:
        if self.max < self.min:
            raise ValueError(f"max ({self.max:g}) is below min ({self.min:g})")
        return self


class AxisLimit(StrictModel):
    """One limit on one axis: a rate, an optional burst (capacity), an optional algorithm;
    ``adaptive_burst`` replaces a fixed burst with one that follows demand (GCRA only)."""

    rate: RateField
    burst: Count | None = None
    algorithm: AxisAlgorithm | None = None
    shadow: bool | None = None
    adaptive_burst: AdaptiveBurstSpec | None = None

    @model_validator(mode="after")
    def _adaptive(self) -> AxisLimit:
        _check_adaptive(self.adaptive_burst, self.burst, self.algorithm, "burst")
        return self


def _check_adaptive(
    adaptive: AdaptiveBurstSpec | None, burst: float | None, algorithm: str | None, key: str
) -> None:
    if adaptive is None:
        return
    if burst is not None:
        raise ValueError(f"{key} and adaptive_burst exclude each other (adaptive_burst.min is "
                         "the burst until demand is known)")  # fmt: skip
    if algorithm not in (None, "gcra"):
        raise ValueError(f"adaptive_burst needs the gcra algorithm, not {algorithm}")


AxisField = Annotated[AxisLimit, BeforeValidator(_axis_shorthand)]


class PlaneLimits(StrictModel):
    """Limits of one identity plane (or of a shared pool) on each axis.

    ``burst`` is the requests axis' capacity; ``tokens_burst`` and ``cost_burst`` those of the
    other axes (each defaults to the rate's count: ``600/min`` holds 600). ``algorithm`` sets the
    default algorithm of every axis of the plane. ``concurrency`` caps calls in flight.
    """

    requests: AxisField | None = None
    tokens: AxisField | None = None
    cost: AxisField | None = None
    burst: Count | None = None
    tokens_burst: Count | None = None
    cost_burst: Count | None = None
    algorithm: AxisAlgorithm | None = None
    concurrency: Annotated[int, Field(gt=0)] | None = None
    #: Shadow limits decide and report ("would refuse") but never refuse.
    shadow: bool | None = None
    #: The requests axis' burst follows demand (``AdaptiveBurstSpec``); per axis, set
    #: ``requests: {rate: ..., adaptive_burst: ...}`` (or on ``tokens`` / ``cost``).
    adaptive_burst: AdaptiveBurstSpec | None = None

    @model_validator(mode="after")
    def _adaptive(self) -> PlaneLimits:
        self.check_adaptive()
        return self

    def check_adaptive(self) -> None:
        """Raise ``ValueError`` unless every adaptive burst here is usable (also run on merged
        tenant overrides, which ``model_copy`` does not validate)."""
        if self.adaptive_burst is not None:
            if self.requests is None:
                raise ValueError("adaptive_burst needs a requests limit on this plane")
            if self.requests.adaptive_burst is not None:
                raise ValueError("adaptive_burst is set both here and on requests")
        for axis, burst_key in AXIS_BURST_KEYS:
            limit: AxisLimit | None = getattr(self, axis)
            if limit is None:
                continue
            adaptive = limit.adaptive_burst
            if axis == "requests" and adaptive is None:
                adaptive = self.adaptive_burst
            burst = limit.burst if limit.burst is not None else getattr(self, burst_key)
            _check_adaptive(adaptive, burst, limit.algorithm or self.algorithm, burst_key)

    def adaptive_for(self, axis: str) -> AdaptiveBurstSpec | None:
        """The adaptive burst of ``axis`` (the plane-level one belongs to requests)."""
        limit: AxisLimit | None = getattr(self, axis)
        if limit is None:
            return None
        if limit.adaptive_burst is None and axis == "requests":
            return self.adaptive_burst
        return limit.adaptive_burst


class PlaneSet(StrictModel):
    """Limits for the three identity planes."""

    tenant: PlaneLimits | None = None
    agent: PlaneLimits | None = None
    session: PlaneLimits | None = None


class TierSpec(PlaneSet):
    """A named bundle of plane limits that tenants subscribe to."""


class TenantSpec(PlaneSet):
    """A tenant: its tier plus per-plane overrides merged axis by axis on top of the tier."""

    tier: str


class ClassSpec(StrictModel):
    """A workload class profile.

    ``scale`` (0 < scale <= 1) caps the class's own use of every plane at that share of the
    plane's limits, in a class-scoped bucket next to the shared one: ``batch: {scale: 0.5}``
    guarantees batch traffic leaves at least half of every budget to the other classes.
    ``limits`` replaces the plane limits on the axes it names, for this class only.
    """

    priority: Annotated[int, Field(ge=0)] = 1
    max_wait: Duration = 0.0
    sla_p95: Duration | None = None
    scale: Annotated[float, Field(gt=0, le=1)] = 1.0
    limits: PlaneSet | None = None


class ClassesSpec(StrictModel):
    """``default`` names the class of requests that declare none; ``unknown`` says what happens
    to a request naming an undeclared class: served as ``default`` (with a warning header) or
    rejected. Every other key declares a class profile."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, ClassSpec]

    default: str = "interactive"
    unknown: Literal["default", "reject"] = "default"
    #: The longest a waiting call may reserve its slot ahead in the buckets it shares with
    #: other classes. A deferred call holds capacity from the moment it is admitted, so a long
    #: deferral by a low-priority class would refuse higher-priority calls arriving meanwhile;
    #: waits beyond this are the gateway's admission queue's job (it re-decides in priority
    #: order).
    max_defer: Annotated[float, BeforeValidator(parse_duration), Field(ge=0)] = 1.0


class CostRule(StrictModel):
    """Weighted cost units charged on the ``cost`` axis to calls matching a route and method."""

    path_prefix: str = "/"
    method: str | None = None
    units: Count

    @model_validator(mode="after")
    def _upper_method(self) -> CostRule:
        if self.method is not None:
            object.__setattr__(self, "method", self.method.upper())
        return self


class BreakerSpec(StrictModel):
    """The tenant isolation breaker of a shared pool: when one tenant's share of the pool's
    admitted calls over ``window`` exceeds ``share`` (and the pool saw at least ``min_volume``
    calls), that tenant is held to ``floor`` for ``cooldown``; then the breaker closes again
    (half-open: it re-trips at once if the tenant still takes too much).

    ``pressure`` keeps the breaker quiet on an uncontended pool: it acts only once the pool's
    calls over ``window`` reach that fraction of what the pool's request limit allows in the
    window (a lone tenant taking 100 % of an idle pool starves no one). ``0`` disables the
    condition; a pool without a request limit uses ``min_volume`` alone. A tenant that is the
    only one using the pool in the window is never tripped: there is no one to isolate it
    from (the pool's own limits still hold)."""

    share: Annotated[float, Field(gt=0, le=1)] = 0.3
    window: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 60.0
    floor: RateField = Rate(10, 60)
    cooldown: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 120.0
    min_volume: Annotated[int, Field(ge=1)] = 20
    pressure: Annotated[float, Field(ge=0, le=1)] = 0.5


class PoolSpec(PlaneLimits):
    """A shared upstream pool (a provider's quota) that every tenant's calls draw from."""

    breaker: BreakerSpec | None = None


class StoreOptions(StrictModel):
    """How a shared store behaves when it fails (ignored by the memory store).

    ``fail_closed`` refuses (503), ``fail_open`` admits (counted), ``local`` falls back to an
    in-process store with every limit divided by ``replicas`` (the number of sluicegate
    processes sharing the store), so the fleet as a whole stays near the configured limits.
    """

    failure_mode: Literal["fail_closed", "fail_open", "local"] = "fail_closed"
    replicas: Annotated[int, Field(ge=1)] = 1
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 0.05
    backoff: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 0.5
    max_backoff: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 5.0


class RetryBudgetSpec(StrictModel):
    """Finagle-style retry budget: retries allowed in the last ``ttl`` =
    ``min_per_second * ttl + percent/100 * original calls admitted in the last ttl``, kept per
    agent (or per tenant). ``max_per_trace`` caps the retries of one pipeline (W3C
    ``traceparent`` trace id, or ``X-Agent-Pipeline-Id``) across a whole fan-out."""

    percent: Annotated[float, Field(ge=0, le=100)] = 10.0
    min_per_second: Annotated[float, Field(ge=0)] = 1.0
    ttl: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 10.0
    max_per_trace: Annotated[int, Field(gt=0)] | None = None
    trace_ttl: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 600.0
    scope: Literal["agent", "tenant"] = "agent"


class InitTierSpec(StrictModel):
    """The cold-start tier: an instance presenting a valid init token (``sluicegate token
    issue``) is limited by ``limits`` (per instance) and ``aggregate`` (all instances of one
    agent together) instead of the agent and session planes, for ``window`` seconds from the
    token's first use; pool limits still apply, and so do the tenant plane's limits unless
    ``tenant`` gives the tenant's starting instances (all its agents together) an allowance of
    their own, in separate buckets: a tenant whose steady-state burst is 120 cannot otherwise
    start a fleet of 50 instances making 20 calls each. ``secret`` (and ``previous_secret``
    during a rotation) sign the tokens (default: from ``SLUICEGATE_INIT_SECRET`` and
    ``SLUICEGATE_INIT_SECRET_PREVIOUS``, the variables ``sluicegate token issue`` reads).
    ``strict`` refuses a forged, expired, reused-too-late or foreign token with 401 instead of
    ignoring it."""

    window: Annotated[float, BeforeValidator(parse_duration), Field(ge=30, le=120)] = 60.0
    limits: PlaneLimits
    aggregate: PlaneLimits | None = None
    tenant: PlaneLimits | None = None
    #: The signing secret, inline (e.g. ``"${VAR}"``); when unset it is read from the
    #: environment variable named by ``secret_env`` when the policy is loaded. Secrets shorter
    #: than 32 bytes are ignored; with none, no token verifies (the tier stays closed).
    secret: Annotated[str, Field(min_length=32)] | None = None
    previous_secret: str | None = None
    secret_env: str = "SLUICEGATE_INIT_SECRET"
    previous_secret_env: str = "SLUICEGATE_INIT_SECRET_PREVIOUS"
    max_token_ttl: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 3600.0
    strict: bool = False


class AlertSpec(StrictModel):
    """Where alerts (tenant breaker trips, ...) go besides the log: a webhook receiving one JSON
    POST per alert, retried with backoff, never on the request path."""

    webhook: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 2.0


class PolicySpec(StrictModel):
    """The whole policy file."""

    version: Literal[1]
    store: str = "memory"
    store_options: StoreOptions = Field(default_factory=StoreOptions)
    #: Shadow the whole policy: decide and report, never refuse (roll-outs).
    shadow: bool = False
    #: How callers are identified (API keys, JWT, session header); see docs/identity.md.
    identity: IdentitySpec | None = None
    retry_budget: RetryBudgetSpec | None = None
    init: InitTierSpec | None = None
    alerts: list[AlertSpec] = Field(default_factory=list)
    #: The gateway's routes, upstreams and settings (docs/gateway.md); ignored by the engine.
    routes: list[RouteSpec] = Field(default_factory=list)
    upstreams: dict[str, UpstreamSpec] = Field(default_factory=dict)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    default_tier: str | None = None
    tiers: dict[str, TierSpec] = Field(min_length=1)
    tenants: dict[str, TenantSpec] = Field(default_factory=dict)
    classes: ClassesSpec = Field(default_factory=ClassesSpec)
    costs: list[CostRule] = Field(default_factory=list)
    default_cost: Count = 1.0
    pools: dict[str, PoolSpec] = Field(default_factory=dict)
    settle_ttl: Duration = 600.0
