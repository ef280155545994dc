"""Envoy's gRPC rate-limit service (``envoy.service.ratelimit.v3.RateLimitService``).

``sluicegate rls --policy FILE`` answers ``ShouldRateLimit`` with the engine. Two policy sources:

**A sluicegate policy** (``--policy``). Each request descriptor is one engine decision. Its
entries are mapped to a :class:`~sluicegate.engine.RequestContext` by key (configurable with
:class:`DescriptorKeys`; defaults ``tenant``, ``agent``, ``session``, ``workload_class``,
``tokens``). A descriptor without the tenant key is not ours: it gets ``OK`` with no limit.

Costs come from ``hits_addend``: the descriptor's own (``RateLimitDescriptor.hits_addend``, a
wrapper, so an explicit ``0`` means *check only*) or else the request's (proto3 cannot tell an
unset ``uint32`` from 0, so a request-level 0 means 1, as in Envoy and envoyproxy/ratelimit):

* no ``tokens`` entry: the requests (and cost-unit) buckets are charged ``hits``; token
  buckets are checked at cost 0 (refused only when already overdrawn);
* ``tokens`` entry with a number (e.g. from an ``x-estimated-tokens`` header): requests are
  charged ``hits`` and tokens that number (times 0 when ``hits`` is 0, i.e. check only);
* ``tokens`` entry with any other value (e.g. ``tokens: usage``): a *token descriptor*; tokens
  are charged ``hits`` and requests 0. This is the "check on request, debit on response"
  pattern: Envoy sends ``hits_addend: 0`` on the request and the response's usage as
  ``hits_addend`` from ``apply_on_stream_done``.

**An envoyproxy/ratelimit config** (``--envoy-config``), decided as that project documents
(see :mod:`sluicegate.policy.envoy_config`). Both sources can be loaded at once: a request whose
``domain`` has an envoy config is decided by it, any other by the sluicegate policy.

The response: ``overall_code`` is ``OVER_LIMIT`` if any descriptor is; each descriptor status
carries ``current_limit`` (the tightest bucket as ``requests_per_unit`` per ``unit``),
``limit_remaining`` and ``duration_until_reset``; ``response_headers_to_add`` are the rate-limit
headers of :func:`sluicegate.headers.render_headers`, and ``request_headers_to_add`` carries
``x-sluicegate-decision-id`` so an upstream can settle the token reservation via the decision
API. Shadow limits never refuse; they are logged and counted as ``would_refuse``.

A store failure is answered with gRPC ``UNAVAILABLE`` (never ``UNKNOWN``), so Envoy's
``failure_mode_deny`` decides; any other failure with ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sluicegate.clock import Clock, MonotonicClock
from sluicegate.engine import Decision, Engine, Outcome, Reason, RequestContext
from sluicegate.errors import StoreError
from sluicegate.headers import render_headers
from sluicegate.integrations.common import Metrics, shadow_refused, store_unavailable
from sluicegate.policy.envoy_config import UNIT_SECONDS, EnvoyDomain, EnvoyLimit, Match
from sluicegate.policy.resolve import Axis, Plane, Rule
from sluicegate.policy.units import Rate
from sluicegate.stores.base import Batch, BatchResult, Store

log = logging.getLogger("sluicegate.rls")

SERVICE_NAME = "envoy.service.ratelimit.v3.RateLimitService"
DECISION_ID_HEADER = "x-sluicegate-decision-id"

_OK = rls_pb2.RateLimitResponse.OK
_OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
_UNITS = rls_pb2.RateLimitResponse.RateLimit
_UNIT_ENUM = {
    "second": _UNITS.SECOND,
    "minute": _UNITS.MINUTE,
    "hour": _UNITS.HOUR,
    "day": _UNITS.DAY,
    "week": _UNITS.WEEK,
    "month": _UNITS.MONTH,
    "year": _UNITS.YEAR,
}
_UNIT_NAMES = {v: k for k, v in _UNIT_ENUM.items()}


@dataclass(frozen=True, slots=True)
class DescriptorKeys:
    """Descriptor entry keys that carry each part of the request context."""

    tenant: str = "tenant"
    agent: str = "agent"
    session: str = "session"
    workload_class: str = "workload_class"
    tokens: str = "tokens"
    #: Agent id used when a descriptor names a tenant but no agent.
    default_agent: str = "anonymous"


def _number(value: str) -> float | None:
    try:
        n = float(value)
    except ValueError:
        return None
    return n if math.isfinite(n) and n >= 0 else None


def context_for(
    entries: Iterable[Any], hits: float, keys: DescriptorKeys, max_wait: float
) -> tuple[RequestContext, float] | None:
    """``(context, request weight)`` for one descriptor's entries (objects with ``key`` and
    ``value``, e.g. protobuf ``Entry``), or None if it names no tenant."""
    tenant = agent = session = klass = tokens_value = None
    k_tenant, k_agent, k_session, k_class, k_tokens = (
        keys.tenant, keys.agent, keys.session, keys.workload_class, keys.tokens,
    )  # fmt: skip
    for e in entries:
        key = e.key
        if key == k_tenant:
            tenant = e.value
        elif key == k_agent:
            agent = e.value
        elif key == k_session:
            session = e.value
        elif key == k_class:
            klass = e.value
        elif key == k_tokens:
            tokens_value = e.value
    if not tenant:
        return None
    weight = hits
    tokens = 0.0
    if tokens_value is not None:
        n = _number(tokens_value)
        if n is None:  # a token descriptor: hits are tokens
            tokens, weight = hits, 0.0
        else:
            tokens = n if hits > 0 else 0.0
    ctx = RequestContext(
        tenant=tenant,
        agent=agent or keys.default_agent,
        session=session or None,
        workload_class=klass or None,
        tokens=tokens,
        max_wait=max_wait,
    )
    return ctx, weight


def unit_of(rate: Rate) -> tuple[int, int]:
    """``(requests_per_unit, Unit)`` for a rate: the smallest Envoy unit at least as long as the
    rate's period, rounded down (never overstated)."""
    for name in ("second", "minute", "hour", "day"):
        secs = UNIT_SECONDS[name]
        if rate.period <= secs + 1e-9:
            return int(math.floor(rate.count * secs / rate.period + 1e-9)), _UNIT_ENUM[name]
    return int(math.floor(rate.count * 86400 / rate.period + 1e-9)), _UNITS.DAY


def _duration(seconds: float) -> Any:
    ns = int(max(0.0, seconds) * 1e9)
    return duration_pb2.Duration(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _status(code: int, rate: Rate | None, name: str, remaining: int, reset: float) -> Any:
    st = rls_pb2.RateLimitResponse.DescriptorStatus(code=code, limit_remaining=max(0, remaining))
    if rate is not None:
        rpu, unit = unit_of(rate)
        st.current_limit.name = name
        st.current_limit.requests_per_unit = rpu
        st.current_limit.unit = unit
    st.duration_until_reset.FromNanoseconds(int(max(0.0, reset) * 1e9))
    return st


def _envoy_rule(lim: EnvoyLimit) -> Rule:
    """A header-plan rule for an envoy-config limit, named after it (for render_headers)."""
    rule = Rule(
        Plane.TENANT, Axis.REQUESTS, lim.limit, Rate(float(lim.requests_per_unit), lim.window)
    )
    object.__setattr__(rule, "name", lim.label)
    return rule


class _Unavailable(Exception):
    """Internal: answer this call with gRPC UNAVAILABLE."""


class RateLimitServicer:
    """The ``ShouldRateLimit`` handler (register with :func:`add_to_server`)."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        envoy: Mapping[str, EnvoyDomain] | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        keys: DescriptorKeys | None = None,
        max_wait: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        if engine is None and not envoy:
            raise ValueError("RateLimitServicer needs an engine, an envoy config, or both")
        self.engine = engine
        self.envoy: Mapping[str, EnvoyDomain] = dict(envoy or {})
        base_store = store if store is not None else (engine.store if engine else None)
        if base_store is None:
            raise ValueError("an envoy config needs a store")
        self.store: Store = base_store
        self.clock: Clock = clock or (engine.clock if engine is not None else MonotonicClock())
        self.keys = keys or DescriptorKeys()
        self.max_wait = max_wait
        self.metrics = metrics or Metrics()
        self._rules: dict[EnvoyLimit, Rule] = {}
        self._limits: dict[Rule, Any] = {}
        self._concurrency: dict[int, tuple[tuple[Rule, ...], bool]] = {}

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC)
        try:
            domain = self.envoy.get(request.domain)
            if domain is not None:
                return await self._envoy(request, domain)
            if self.engine is None:
                return rls_pb2.RateLimitResponse(overall_code=_OK)
            return await self._policy(request, self.engine)
        except (StoreError, _Unavailable) as exc:
            self.metrics.counts["store_unavailable"] += 1
            log.warning("rls: store unavailable: %s", exc)
            message = f"sluicegate: store unavailable: {exc}"
        except Exception:
            self.metrics.counts["errors"] += 1
            log.exception("rls: ShouldRateLimit failed")
            await context.abort(grpc.StatusCode.INTERNAL, "sluicegate: internal error")
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    # -- sluicegate policy ------------------------------------------------------------------
    def _current_limit(self, rule: Rule) -> Any:
        """The ``current_limit`` message of a rule (cached: rules are immutable)."""
        cached = self._limits.get(rule, False)
        if cached is False:
            cached = None
            if rule.rate is not None:
                rpu, unit = unit_of(rule.rate)
                cached = _UNITS(name=rule.name, requests_per_unit=rpu, unit=unit)
            self._limits[rule] = cached
        return cached

    def _holds(self, rules: tuple[Rule, ...]) -> bool:
        """Whether decisions on these rules hold a concurrency slot until settled."""
        cached = self._concurrency.get(id(rules))
        if cached is None or cached[0] is not rules:
            cached = (rules, any(r.axis is Axis.CONCURRENCY for r in rules))
            if len(self._concurrency) < 10_000:
                self._concurrency[id(rules)] = cached
        return cached[1]

    async def _policy(self, request: Any, engine: Engine) -> Any:
        request_hits = float(request.hits_addend or 1)
        resp = rls_pb2.RateLimitResponse(overall_code=_OK)
        add_status = resp.statuses.add
        shown: Decision | None = None
        keys = self.keys
        for d in request.descriptors:
            hits = float(d.hits_addend.value) if d.HasField("hits_addend") else request_hits
            mapped = context_for(d.entries, hits, keys, self.max_wait)
            if mapped is None:
                add_status(code=_OK)
                continue
            ctx, weight = mapped
            ctx.hits = weight  # Envoy's hits_addend weighs requests and cost units
            decision = await engine.decide(ctx)
            if store_unavailable(decision):
                raise _Unavailable(decision.warning or "fail closed")
            self.metrics.record(decision, where="rls")
            outcome = decision.outcome
            if outcome is Outcome.WAIT and decision.delay > 0:
                await asyncio.sleep(decision.delay)
            refused = outcome is Outcome.REFUSE
            if refused:
                resp.overall_code = _OVER
                if shown is None or shown.allowed:
                    shown = decision
            elif shown is None:
                shown = decision
            if not refused and (decision.reserved_tokens > 0 or self._holds(decision.rules)):
                resp.request_headers_to_add.add(key=DECISION_ID_HEADER, value=decision.id)
            code = _OVER if refused else _OK
            result = decision.result
            if result is None or not decision.rules:
                retry = decision.retry_after
                reset = retry if retry is not None and math.isfinite(retry) else 0.0
                add_status(code=code, duration_until_reset=_duration(reset))
                continue
            # the tightest bucket: a refusing one if any, else the fewest units left (relative)
            best, best_score = 0, math.inf
            rules = decision.rules
            for i, (left, retry_i) in enumerate(
                zip(result.remaining, result.retry_after, strict=True)
            ):
                cap = rules[i].limit.capacity
                score = left / cap if cap else 0.0
                if refused and retry_i > 0:
                    score -= 2.0
                if score < best_score:
                    best, best_score = i, score
            retry_b = result.retry_after[best]
            reset = retry_b if refused and math.isfinite(retry_b) else result.reset[best]
            add_status(
                code=code,
                current_limit=self._current_limit(rules[best]),
                limit_remaining=max(0, result.remaining[best]),
                duration_until_reset=_duration(reset),
            )
        if shown is not None:
            add_header = resp.response_headers_to_add.add
            for name, value in render_headers(shown):
                add_header(key=name, value=value)
            if shadow_refused(shown) and shown.allowed:
                add_header(key="x-sluicegate-shadow", value="would-refuse")
        return resp

    # -- envoyproxy/ratelimit config ------------------------------------------------------------
    def _override(self, dom: EnvoyDomain, d: Any, entries: list[tuple[str, str]]) -> Match | None:
        unit = _UNIT_NAMES.get(d.limit.unit)
        if unit is None:
            return None
        lim = EnvoyLimit(
            path=("override", *[f"{k}_{v}" for k, v in entries]),
            requests_per_unit=int(d.limit.requests_per_unit),
            unit=unit,
            unit_multiplier=1,
            unlimited=False,
            shadow_mode=False,
            detailed_metric=False,
            name=None,
            replaces=(),
        )
        key = dom.bucket_key(entries) + f"|override={lim.requests_per_unit}/{unit}"
        return Match(lim, key)

    async def _envoy(self, request: Any, dom: EnvoyDomain) -> Any:
        request_hits = float(request.hits_addend or 1)
        descs = list(request.descriptors)
        entries = [[(e.key, e.value) for e in d.entries] for d in descs]
        matches = dom.select(entries)
        for i, d in enumerate(descs):
            if d.HasField("limit"):
                matches[i] = self._override(dom, d, entries[i])
        hits = [
            float(d.hits_addend.value) if d.HasField("hits_addend") else request_hits for d in descs
        ]
        enforced = [
            i
            for i, m in enumerate(matches)
            if m is not None and not m.limit.unlimited and not m.limit.shadow_mode
        ]
        now = self.clock.now()
        results: dict[int, tuple[bool, int, float, float]] = {}
        if enforced:
            batch = Batch(
                [matches[i].key for i in enforced],  # type: ignore[union-attr]
                [matches[i].limit.limit for i in enforced],  # type: ignore[union-attr]
                [hits[i] for i in enforced],
            )
            res = await self.store.apply(batch, now)
            for j, i in enumerate(enforced):
                results[i] = (
                    res.retry_after[j] <= 0.0,
                    res.remaining[j],
                    res.reset[j],
                    res.retry_after[j],
                )
        shadow_hits: list[str] = []
        for i, m in enumerate(matches):
            if m is not None and m.limit.shadow_mode and not m.limit.unlimited:
                batch = Batch([m.key], [m.limit.limit], [hits[i]])
                r = await self.store.apply(batch, now)
                results[i] = (True, r.remaining[0], r.reset[0], 0.0)
                if not r.allowed:
                    shadow_hits.append(m.limit.label)
        resp = rls_pb2.RateLimitResponse(overall_code=_OK)
        rules: list[Rule] = []
        remaining: list[int] = []
        resets: list[float] = []
        retries: list[float] = []
        for i, m in enumerate(matches):
            if m is None or m.limit.unlimited:
                resp.statuses.append(rls_pb2.RateLimitResponse.DescriptorStatus(code=_OK))
                continue
            ok, left, reset, retry = results[i]
            lim = m.limit
            rate = Rate(float(lim.requests_per_unit), lim.window)
            st = _status(_OK if ok else _OVER, rate, lim.label, left, reset)
            if lim.unit_multiplier == 1:
                st.current_limit.requests_per_unit = lim.requests_per_unit
                st.current_limit.unit = _UNIT_ENUM[lim.unit]
            resp.statuses.append(st)
            if not ok:
                resp.overall_code = _OVER
            rule = self._rules.get(lim)
            if rule is None:
                rule = self._rules[lim] = _envoy_rule(lim)
            rules.append(rule)
            remaining.append(left)
            resets.append(reset)
            retries.append(retry)
        counts = self.metrics.counts
        counts["decisions"] += 1
        if resp.overall_code == _OVER:
            counts["refused"] += 1
        if shadow_hits:
            counts["would_refuse"] += 1
            log.info("rls: shadow: would refuse %s/%s", dom.domain, ",".join(shadow_hits))
        if rules:
            refused = resp.overall_code == _OVER
            decision = Decision(
                "", Outcome.REFUSE if refused else Outcome.ALLOW,
                Reason.RATE_LIMITED if refused else Reason.OK, 0.0,
                max(retries) if refused else None, "", tuple(rules), (), (),
                BatchResult(not refused, 0.0, remaining, resets, retries),
            )  # fmt: skip
            for name, value in render_headers(decision):
                resp.response_headers_to_add.append(base_pb2.HeaderValue(key=name, value=value))
        return resp


class MinimalServicer:
    """Answers OK without deciding: the benchmark's baseline for the gRPC stack's own cost."""

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC)
        return rls_pb2.RateLimitResponse(overall_code=_OK)


class RlsServer:
    """A grpc.aio server with the rate-limit service and the standard health service."""

    def __init__(self, servicer: Any, *, host: str = "127.0.0.1", port: int = 8081) -> None:
        self.servicer = servicer
        self.host = host
        self.port = port
        self.health = health.aio.HealthServicer()
        self._server: Any = None

    async def start(self) -> RlsServer:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise OSError(f"cannot bind {self.host}:{self.port}")
        self.port = bound
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        await self.health.set(SERVICE_NAME, serving)
        self._server = server
        return self

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(grace)
            self._server = None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(servicer: Any, *, host: str = "127.0.0.1", port: int = 8081) -> RlsServer:
    """Start an RLS server (``port=0`` picks a free port; see ``RlsServer.port``)."""
    return await RlsServer(servicer, host=host, port=port).start()
