"""The discrete-event runner: a heap of events on virtual time, driving the real engine.

Each event is ``(time, seq, kind, call)``; ``seq`` breaks ties in scheduling order, so a run is
a pure function of (policy, traffic, seed). Per event the runner moves the engine's
:class:`~sluicegate.clock.VirtualClock` to the event's time and then:

* ``ATTEMPT``: asks ``Engine.decide``. Allowed: the upstream call starts now, or after
  ``decision.delay`` for a deferred admission (``Outcome.WAIT``), and a ``COMPLETE`` event is
  scheduled after the upstream's service time. Refused: the client's :class:`RetryPolicy`
  picks the next attempt's time from the ``retry-after-ms`` value, or gives up.
* ``START`` (deferred admissions only): the upstream call starts.
* ``QUEUED`` (``admission_queue=True``, the default): the gateway's admission queue
  (:mod:`sluicegate.gateway.admission`), modelled as ``sluicegate serve`` runs it: decisions use
  ``max_wait=0``, and a call refused as ``rate_limited`` whose class may wait (``max_wait > 0``)
  and whose retry time fits what is left of that wait stays in the gateway and is decided again
  at its retry time, instead of going back to the client as a 429. Not modelled: the queue's
  priority order among calls due at the same instant (the heap takes them in arrival order).
* The upstream provider enforces its own quota (``provider=True``, the default): two GCRA
  buckets (requests/min and tokens/min, capacity one minute's worth, checked on the call's
  token reservation as OpenAI does) from :mod:`sluicegate.algorithms`. A call the gateway
  admitted above that quota gets the provider's 429 (no Retry-After), the gateway settles its
  reservation at 0 tokens, and the client retries with backoff: the damage a policy that
  admits more than the quota does downstream.
* ``COMPLETE``: settles the reservation with the actual usage (``Engine.settle``) and starts
  the actor's next step after its think time.

Alongside, each actor keeps an *ideal* clock: where its script would be if every call succeeded
at once (gap + service time per step). A step whose ideal start is within the duration is part
of the **demand**, the same for every policy; what the policy got done is measured against it
(see :mod:`sluicegate.sim.metrics`). When the actor's real clock passes the duration, the rest of
its demand is counted by drawing the script on (those calls are not done).

Actors marked ``init_token`` (starting containers) get a real signed init token when the policy
has an init tier: the runner gives the tier a secret of its own for the run
(:func:`sim_init_secret`), mints one token per actor with
:func:`sluicegate.engine.init_tokens.issue_token`, and runs the engine's wall clock (used only to
check the tokens' issue and expiry times) in step with the virtual clock.

No event loop: the engine's coroutines are driven with ``coro.send(None)``. That is exact only
because the :class:`~sluicegate.stores.memory.MemoryStore` never suspends (its ``apply`` and
``settle`` return without awaiting anything); :func:`_drive` raises if a coroutine ever yields,
and :func:`simulate` only accepts a memory store.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from sluicegate.algorithms import gcra_step
from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, Outcome, Reason, RequestContext
from sluicegate.engine.init_tokens import issue_token
from sluicegate.policy.resolve import Axis, Policy
from sluicegate.sim.clients import RetryPolicy, retry_after_header, should_retry
from sluicegate.sim.metrics import Accumulator, ClassStats, RunResult
from sluicegate.sim.model import ActorSpec, Step, Traffic
from sluicegate.stores.memory import MemoryStore

T = TypeVar("T")

_ATTEMPT = 0
_COMPLETE = 1
_START = 2
_QUEUED = 3
#: A queued call is decided again this long after its exact retry time (float rounding).
_QUEUE_SLACK = 1e-6
_REFUSE = Outcome.REFUSE
#: The engine's built-in class SLAs (``policy.resolve``), for classes a policy leaves unset.
BUILTIN_SLA = {"realtime": 0.8, "interactive": 3.0, "batch": 60.0}
#: Virtual seconds between the memory store's sweeps of idle buckets and lapsed reservations
#: (see :func:`simulate`). Settled reservations are kept ``settle_ttl`` (10 min by default)
#: for idempotency, so sweeping much more often than that rescans records that cannot lapse.
SWEEP_INTERVAL = 300.0
#: Number of time bins of the series in a report.
SERIES_BINS = 120
#: Wall-clock time (seconds since the epoch) of virtual time 0, for init tokens.
WALL_EPOCH = 1_700_000_000.0


#: Whether this engine's RequestContext carries retry attempts and trace ids (retry budgets).
_CTX_FIELDS = set(getattr(RequestContext, "__dataclass_fields__", {}))
_HAS_RETRY_ATTEMPT = "retry_attempt" in _CTX_FIELDS
_HAS_TRACE = "trace_id" in _CTX_FIELDS


def has_feature(policy: Policy, feature: str) -> bool:
    """Whether ``policy`` configures an agentic control a scenario note is about
    (``retry_budget``, ``tenant_breaker``, ``init_tier``); ``""`` is never present."""
    spec = policy.spec
    if feature == "retry_budget":
        return getattr(spec, "retry_budget", None) is not None
    if feature == "tenant_breaker":
        return any(getattr(pool, "breaker", None) is not None for pool in spec.pools.values())
    if feature == "init_tier":
        return getattr(spec, "init", None) is not None
    return False


def safe_instance(spec: ActorSpec) -> str:
    """An instance id for an actor's init token (at most 128 characters with its index)."""
    return (spec.session or spec.agent)[:100]


class EngineSuspended(RuntimeError):
    """An engine coroutine awaited something that suspends: the simulator cannot drive it."""


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to completion, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise EngineSuspended("the engine suspended: the simulator needs a store that never awaits")


class _Call:
    """One actor and its call in flight. Actors are sequential (at most one call in flight),
    so the actor object *is* the call, and its request context is reused from call to call:
    the hot loop allocates almost nothing per call."""

    __slots__ = (
        "spec", "steps", "group", "retry", "ctx", "accs", "series_admitted", "series_refused",
        "step", "t0", "retries", "acc", "decision_id", "ideal", "in_demand", "task_ok",
        "arrived", "queued",
    )  # fmt: skip

    def __init__(self, spec: ActorSpec, rng: random.Random, ctx: RequestContext) -> None:
        self.spec = spec
        self.steps = iter(spec.steps(rng))
        self.group = spec.group
        self.retry: RetryPolicy = spec.retry
        self.ctx = ctx
        self.accs: dict[str, Accumulator] = {}
        self.series_admitted: list[int] = []
        self.series_refused: list[int] = []
        self.step: Step | None = None
        self.t0 = 0.0
        self.retries = 0
        self.acc = Accumulator()
        self.decision_id = ""
        #: When the client's current attempt reached the gateway, and whether it has queued.
        self.arrived = 0.0
        self.queued = False
        #: Where the script would be if every call had succeeded at once (the demand's clock).
        self.ideal = spec.start
        #: Whether the current step is part of the demand; whether the current task is intact.
        self.in_demand = False
        self.task_ok = True


def sim_init_secret(seed: int) -> str:
    """The init-token secret the simulator gives a policy's init tier for a run (a policy's own
    secret comes from its environment, which a simulation must not need)."""
    return f"sluicegate-simulator-init-secret-{seed:08d}"


def with_sim_secret(policy: Policy, seed: int) -> Policy:
    """``policy`` with its init tier verifying the simulator's tokens (unchanged without one)."""
    if policy.init is None:
        return policy
    init = dataclasses.replace(policy.init, secrets=(sim_init_secret(seed),))
    return dataclasses.replace(policy, init=init, _cache={})


def pool_for(policy: Policy, wanted: str | None) -> str | None:
    """The pool a scenario's calls draw from under ``policy``: the named one if the policy has
    it, else the policy's only pool, else none."""
    if wanted is None:
        return None
    if wanted in policy.pools:
        return wanted
    if len(policy.pools) == 1:
        return next(iter(policy.pools))
    return None


def quota_of(policies: list[Policy], traffic: Traffic) -> tuple[float, float]:
    """``(tokens/min, requests/min)`` of the provider: the first policy's pool rates where it
    declares them, else the scenario's defaults."""
    tokens = requests = None
    for policy in policies:
        pool = pool_for(policy, traffic.pool)
        for rule in policy.pools.get(pool, ()) if pool else ():
            if rule.rate is None:
                continue
            if rule.axis is Axis.TOKENS and tokens is None:
                tokens = rule.rate.per_second * 60.0
            elif rule.axis is Axis.REQUESTS and requests is None:
                requests = rule.rate.per_second * 60.0
    return (
        tokens if tokens is not None else traffic.quota_tokens_per_min,
        requests if requests is not None else traffic.quota_requests_per_min,
    )


def sla_targets(*policies: Policy) -> dict[str, float | None]:
    """Per class, the first ``sla_p95`` the policies declare (built-in default otherwise), so
    runs compared side by side are measured against the same targets."""
    out: dict[str, float | None] = {}
    for name in ("realtime", "interactive", "batch"):
        declared = [p.classes[name].sla_p95 for p in policies if name in p.classes]
        out[name] = next((v for v in declared if v is not None), BUILTIN_SLA[name])
    for policy in policies:
        for name, profile in policy.classes.items():
            out.setdefault(name, profile.sla_p95)
    return out


def simulate(
    policy: Policy,
    traffic: Traffic,
    *,
    seed: int = 0,
    label: str | None = None,
    sla: Mapping[str, float | None] | None = None,
    quota: tuple[float, float] | None = None,
    provider: bool = True,
    store: MemoryStore | None = None,
    admission_queue: bool = True,
) -> RunResult:
    """Run ``traffic`` against ``policy`` on a fresh engine and memory store; see the module
    docstring. ``sla`` and ``quota`` default to the policy's own; ``admission_queue=False``
    runs the engine alone (deferred admission only, no gateway queue)."""
    if store is None:
        # The store's sweep runs once per ``sweep_interval`` of *clock* time; on a virtual
        # clock one second is a few thousand decisions, not tens of thousands, so the default
        # 1 s would sweep on nearly every decision. Every few virtual minutes keeps memory
        # bounded (by the callers' keys and the settle_ttl window) at a fraction of the cost.
        store = MemoryStore(sweep_interval=SWEEP_INTERVAL)
    if not isinstance(store, MemoryStore):
        raise TypeError("the simulator drives the engine without an event loop: MemoryStore only")
    started = time.perf_counter()
    clock = VirtualClock(0.0)
    minting = policy.init is not None and any(a.init_token for a in traffic.actors)
    if minting:
        policy = with_sim_secret(policy, seed)
    alerts: list[dict[str, Any]] = []
    engine = Engine(
        policy,
        store,
        clock,
        wall_clock=lambda: WALL_EPOCH + clock.now(),
        on_alert=lambda event: alerts.append({**event, "t": clock.now()}),
    )
    targets = dict(sla) if sla is not None else sla_targets(policy)
    quota_tokens, quota_requests = quota or quota_of([policy], traffic)
    pool = pool_for(policy, traffic.pool)
    duration = traffic.duration
    bin_width = max(duration / SERIES_BINS, 1e-3)
    n_bins = SERIES_BINS + SERIES_BINS // 2  # a tail for retries after the last start
    inv_bin = 1.0 / bin_width
    last_bin = n_bins - 1

    groups = sorted({a.group for a in traffic.actors})
    admitted_series = {g: [0] * n_bins for g in groups}
    refused_series = {g: [0] * n_bins for g in groups}
    tokens_series = [0.0] * n_bins
    accs: dict[tuple[str, str], Accumulator] = {}
    refused_by: dict[str, int] = {}
    unknown: set[str] = set()
    jitter = random.Random(f"{seed}:{traffic.scenario}:jitter")

    heap: list[tuple[float, int, int, _Call]] = []
    push = heapq.heappush
    pop = heapq.heappop
    seq = itertools.count()
    decide = engine.decide
    settle = engine.settle

    def acc_for(call: _Call, step: Step) -> Accumulator:
        klass, phase = step.workload_class, step.phase
        group = call.group if phase is None else f"{call.group}/{phase}"
        acc = accs.get((group, klass))
        if acc is None:
            acc = accs[(group, klass)] = Accumulator()
        call.accs[klass if phase is None else f"{klass}/{phase}"] = acc
        return acc

    def finish(call: _Call, ok: bool) -> None:
        """The current step ended (succeeded, or the client gave up): count it in the demand's
        figures and in its task's."""
        step = call.step
        assert step is not None
        if not ok:
            call.task_ok = False
        if call.in_demand:
            if ok:
                call.acc.done += 1
            if step.end:
                call.acc.tasks += 1
                if call.task_ok:
                    call.acc.tasks_done += 1
        if step.end:
            call.task_ok = True

    def drain(call: _Call) -> None:
        """The actor's real clock passed the duration: the rest of its demand is not done."""
        ideal = call.ideal
        while ideal <= duration:
            step = next(call.steps, None)
            if step is None:
                break
            ideal += step.gap
            if ideal > duration:
                break
            key = (
                step.workload_class if step.phase is None else f"{step.workload_class}/{step.phase}"
            )
            acc = call.accs.get(key) or acc_for(call, step)
            acc.demand += 1
            if step.end:
                acc.tasks += 1
            ideal += step.service
        call.ideal = ideal

    def next_step(call: _Call, now: float) -> None:
        step = next(call.steps, None)
        if step is None:
            return
        klass = step.workload_class
        acc = call.accs.get(klass if step.phase is None else f"{klass}/{step.phase}")
        if acc is None:
            acc = acc_for(call, step)
        ideal = call.ideal + step.gap
        in_demand = ideal <= duration
        if in_demand:
            acc.demand += 1
        call.ideal = ideal + step.service
        start = now + step.gap
        if start > duration:
            if in_demand and step.end:
                acc.tasks += 1
            drain(call)
            return
        call.in_demand = in_demand
        ctx = call.ctx
        ctx.workload_class = klass
        ctx.tokens = step.tokens
        if has_retry_attempt and call.retries:
            setattr(ctx, "retry_attempt", 0)  # noqa: B010 - absent on older engines
        call.step = step
        call.t0 = start
        call.retries = 0
        call.acc = acc
        push(heap, (start, next(seq), _ATTEMPT, call))

    has_retry_attempt = _HAS_RETRY_ATTEMPT
    init_ttl = policy.init.max_token_ttl if policy.init is not None else 0.0
    # The gateway decides with max_wait=0 and queues instead (see the module docstring).
    queue_waits = {n: c.max_wait for n, c in policy.classes.items()} if admission_queue else {}
    ctx_wait = 0.0 if admission_queue else None
    rate_limited = Reason.RATE_LIMITED
    for index, spec in enumerate(traffic.actors):
        ctx = RequestContext(
            spec.tenant, spec.agent, spec.session, path=spec.path, pool=pool, max_wait=ctx_wait
        )
        if _HAS_TRACE and spec.trace is not None:
            setattr(ctx, "trace_id", spec.trace)  # noqa: B010 - absent on older engines
        if minting and spec.init_token:
            ctx.init_token = issue_token(
                sim_init_secret(seed), tenant=spec.tenant, agent=spec.agent,
                instance=f"{safe_instance(spec)}-{index}", ttl=init_ttl,
                now=WALL_EPOCH + spec.start,
            )  # fmt: skip
        call = _Call(spec, random.Random(f"{seed}:{traffic.scenario}:{index}"), ctx)
        call.series_admitted = admitted_series[spec.group]
        call.series_refused = refused_series[spec.group]
        next_step(call, spec.start)

    # The provider's own quota: one GCRA bucket per axis, a minute's worth of capacity.
    req_interval, req_burst = 60.0 / quota_requests, quota_requests
    tok_interval, tok_burst = 60.0 / quota_tokens, quota_tokens
    provider_tats = [0.0, 0.0]

    def upstream(call: _Call, now: float) -> None:
        """The upstream call starts at ``now``: the provider admits it or answers 429."""
        step = call.step
        assert step is not None
        acc = call.acc
        if provider:
            ok_r, tat_r = gcra_step(provider_tats[0], now, 1.0, req_interval, req_burst)[:2]
            ok_t, tat_t = gcra_step(provider_tats[1], now, step.tokens, tok_interval, tok_burst)[:2]
            if not (ok_r and ok_t):
                acc.upstream_refused += 1
                acc.wasted_tokens += step.tokens
                b = int(now * inv_bin)
                call.series_refused[b if b < last_bin else last_bin] += 1
                _drive(settle(call.decision_id, 0.0))
                wait = call.retry.delay(call.retries, None, jitter)
                if wait is None:
                    acc.gave_up += 1
                    finish(call, False)
                    next_step(call, now)
                else:
                    call.retries += 1
                    if _HAS_RETRY_ATTEMPT:
                        setattr(call.ctx, "retry_attempt", call.retries)  # noqa: B010
                    push(heap, (now + wait, next(seq), _ATTEMPT, call))
                return
            provider_tats[0] = tat_r
            provider_tats[1] = tat_t
        b = int(now * inv_bin)
        tokens_series[b if b < last_bin else last_bin] += step.actual
        push(heap, (now + step.service, next(seq), _COMPLETE, call))

    decisions = 0
    while heap:
        now, _, kind, call = pop(heap)
        clock.set(now)
        acc = call.acc
        if kind == _ATTEMPT or kind == _QUEUED:
            decisions += 1
            if kind == _ATTEMPT:
                if call.retries == 0:
                    acc.calls += 1
                acc.attempts += 1
                call.arrived = now
                call.queued = False
            coro = decide(call.ctx)  # inlined _drive (hot path)
            try:
                coro.send(None)
            except StopIteration as stop:
                decision = stop.value
            else:
                coro.close()
                raise EngineSuspended("the engine suspended: use a store that never awaits")
            b = int(now * inv_bin)
            if b > last_bin:
                b = last_bin
            if decision.outcome is not _REFUSE:
                acc.admitted += 1
                call.series_admitted[b] += 1
                call.decision_id = decision.id
                if decision.delay > 0:
                    acc.waited += 1
                    push(heap, (now + decision.delay, next(seq), _START, call))
                else:
                    upstream(call, now)
                continue
            if queue_waits and decision.reason is rate_limited:
                due = now + (decision.retry_after or 0.0)
                if due <= call.arrived + queue_waits.get(decision.workload_class, 0.0):
                    if not call.queued:  # it waits in the gateway, not at the client
                        call.queued = True
                        acc.waited += 1
                    push(heap, (due + _QUEUE_SLACK, next(seq), _QUEUED, call))
                    continue
            acc.refused += 1
            call.series_refused[b] += 1
            result = decision.result
            if result is not None:
                for rule, retry in zip(decision.rules, result.retry_after, strict=True):
                    if retry > 0:
                        refused_by[rule.name] = refused_by.get(rule.name, 0) + 1
            else:
                name = decision.reason.value
                refused_by[name] = refused_by.get(name, 0) + 1
                if decision.warning:
                    unknown.add(decision.warning)
            wait = (
                call.retry.delay(call.retries, retry_after_header(decision.retry_after), jitter)
                if should_retry(decision.reason)
                else None
            )
            if wait is None:
                acc.gave_up += 1
                finish(call, False)
                next_step(call, now)
            else:
                call.retries += 1
                if _HAS_RETRY_ATTEMPT:
                    setattr(call.ctx, "retry_attempt", call.retries)  # noqa: B010
                push(heap, (now + wait, next(seq), _ATTEMPT, call))
        elif kind == _START:
            upstream(call, now)
        else:
            step = call.step
            assert step is not None
            coro_settle = settle(call.decision_id, step.actual)
            try:
                coro_settle.send(None)
            except StopIteration:
                pass
            else:
                coro_settle.close()
                raise EngineSuspended("the engine suspended: use a store that never awaits")
            acc.succeeded += 1
            acc.tokens += step.actual
            if call.in_demand:
                acc.latencies.append(max(0.0, now - call.t0 - step.service))
            finish(call, True)
            next_step(call, now)

    stats = [
        ClassStats.of(group, klass, acc, targets.get(klass))
        for (group, klass), acc in sorted(accs.items())
    ]
    latencies: dict[str, list[float]] = {}
    for (_, klass), acc in sorted(accs.items()):
        latencies.setdefault(klass, []).extend(acc.latencies)
    for values in latencies.values():
        values.sort()
    notes = [
        text
        for feature, text in traffic.notes
        if (
            has_feature(policy, feature[1:])
            if feature.startswith("+")
            else not has_feature(policy, feature)
        )
    ]
    notes += [f"the policy refused every call of {w} (unknown to it)" for w in sorted(unknown)]
    for event in alerts:
        if event.get("event") == "tenant_breaker_open":
            notes.append(
                f"t={event['t']:.0f}s: tenant breaker opened for {event.get('tenant')} on pool "
                f"{event.get('pool')} (share {event.get('share')}): {event.get('action')}"
            )
    if traffic.pool is not None and pool is None:
        notes.append(
            f"the policy declares no pool {traffic.pool!r}: nothing guards the provider quota"
        )
    return RunResult(
        scenario=traffic.scenario,
        policy=label or policy.source,
        seed=seed,
        duration=duration,
        stats=stats,
        bin_width=bin_width,
        admitted_series=admitted_series,
        refused_series=refused_series,
        tokens_series=tokens_series,
        quota_tokens_per_min=quota_tokens,
        quota_requests_per_min=quota_requests,
        latencies=latencies,
        refused_by=refused_by,
        notes=notes,
        provider=provider,
        decisions=decisions,
        wall_time=time.perf_counter() - started,
    )


def compare(
    first: Policy,
    second: Policy,
    traffic: Traffic,
    *,
    seed: int = 0,
    labels: tuple[str, str] | None = None,
    provider: bool = True,
) -> tuple[RunResult, RunResult]:
    """The same seeded traffic against two policies, measured against the same SLA targets and
    provider quota."""
    targets = sla_targets(first, second)
    quota = quota_of([first, second], traffic)
    a, b = labels or (first.source, second.source)
    return (
        simulate(first, traffic, seed=seed, label=a, sla=targets, quota=quota, provider=provider),
        simulate(second, traffic, seed=seed, label=b, sla=targets, quota=quota, provider=provider),
    )
