"""Prometheus metrics of the gateway, on a registry of its own (no process-global state).

Why cached children: ``Counter.labels(...)`` costs a few microseconds (label validation, a lock,
a dict lookup keyed by a tuple it builds). On the proxy path that is a measurable share of the
budget, so each label combination's child is looked up once and kept in a plain dict.

Tenant labels are bounded: tenants not declared in the policy (served by ``default_tier``) are
counted as ``_other``, so a flood of unknown tenants cannot blow up the series count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_WAIT = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_ERROR = (-1.0, -0.5, -0.25, -0.1, -0.05, -0.01, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "sluicegate_decisions",
            "Gateway decisions by tenant, workload class, outcome and reason.",
            ("tenant", "workload_class", "outcome", "reason"),
            registry=r,
        )
        self.responses = Counter(
            "sluicegate_responses",
            "Responses sent to clients by route and status code.",
            ("route", "status"),
            registry=r,
        )
        self.queue_wait = Histogram(
            "sluicegate_queue_wait_seconds",
            "Time spent in the priority admission queue, per workload class.",
            ("workload_class",),
            buckets=_WAIT,
            registry=r,
        )
        self.queue_depth = Gauge(
            "sluicegate_queue_depth",
            "Calls waiting in an admission queue, per upstream and workload class.",
            ("upstream", "workload_class"),
            registry=r,
        )
        self.breaker_trips = Counter(
            "sluicegate_tenant_breaker_trips_total",
            "Tenant breaker trips (one per trip across replicas: counted where it tripped).",
            ("tenant", "pool"),
            registry=r,
        )
        self.breaker_open = Gauge(
            "sluicegate_tenant_breaker_open",
            "1 while this replica holds the tenant to its floor on the pool, 0 once released.",
            ("tenant", "pool"),
            registry=r,
        )
        self.scale_events = Counter(
            "sluicegate_scale_events_total",
            "Scale events announced through this replica's admin API.",
            ("tenant",),
            registry=r,
        )
        self.upstream_latency = Histogram(
            "sluicegate_upstream_latency_seconds",
            "Time from forwarding to the upstream's response head.",
            ("upstream",),
            buckets=_LATENCY,
            registry=r,
        )
        self.upstream_errors = Counter(
            "sluicegate_upstream_errors",
            "Upstream connection failures and timeouts.",
            ("upstream", "kind"),
            registry=r,
        )
        self.request_latency = Histogram(
            "sluicegate_request_duration_seconds",
            "Whole request latency as the client sees it (incl. queueing), per workload class.",
            ("workload_class",),
            buckets=_LATENCY,
            registry=r,
        )
        self.sla = Gauge(
            "sluicegate_class_sla_p95_seconds",
            "The policy's p95 latency target per workload class (compare with the histogram).",
            ("workload_class",),
            registry=r,
        )
        self.estimate_error = Histogram(
            "sluicegate_token_estimate_error_ratio",
            "(estimated - reported) / reported prompt tokens, per route dialect.",
            ("dialect",),
            buckets=_ERROR,
            registry=r,
        )
        self.tokens = Counter(
            "sluicegate_tokens_settled",
            "Tokens charged after reconciliation with upstream usage.",
            ("tenant",),
            registry=r,
        )
        self.reloads = Counter(
            "sluicegate_policy_reloads",
            "Policy reloads by result (ok, failed).",
            ("result",),
            registry=r,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._tenants: frozenset[str] = frozenset()
        self._breakers_seen: set[tuple[str, str]] = set()

    def set_open_breakers(self, open_breakers: Mapping[tuple[str, str], float]) -> None:
        """Refresh the breaker gauge from the engine's view (called before each scrape): open
        breakers read 1; ones seen open before and now closed read 0, so a dashboard sees the
        transition instead of a vanished series."""
        self._breakers_seen.update(open_breakers)
        for key in self._breakers_seen:
            self.breaker_open.labels(*key).set(1.0 if key in open_breakers else 0.0)

    def set_policy(self, tenants: frozenset[str], sla: Mapping[str, float | None]) -> None:
        self._tenants = tenants
        for name, target in sla.items():
            if target is not None:
                self.sla.labels(name).set(target)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._children) < 50_000:
                self._children[key] = child
        return child

    def tenant_label(self, tenant: str) -> str:
        return tenant if tenant in self._tenants else "_other"

    def decision(self, tenant: str, workload_class: str, outcome: str, reason: str) -> None:
        self._child(
            self.decisions, self.tenant_label(tenant), workload_class, outcome, reason
        ).inc()

    def response(self, route: str, status: int) -> None:
        self._child(self.responses, route, str(status)).inc()

    def observe(self, metric: Any, value: float, *labels: str) -> None:
        self._child(metric, *labels).observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
