"""What a run measured, per report group (tenant, or a kind of caller) and workload class.

The clients are closed-loop (each actor waits for its call before making the next), so what a
policy does changes how many calls it is asked to make: a policy that makes callers wait a minute
is asked fewer calls, and per-*attempt* figures flatter it. The lead figures are therefore
measured against the **demand**, which does not depend on the policy (definitions also in
``docs/simulate.md``):

* ``demand``: the calls each actor's script would start within the duration if every call
  succeeded at once (replayed from the same seeded script: gaps and upstream service times,
  no limiter); ``tasks``: the tasks (see :class:`~sluicegate.sim.model.Step` ``end``) wholly
  inside the demand.
* ``done``: calls of the demand that succeeded (``goodput = done / demand``); a call the policy
  delayed past the end of the run, or that the client gave up, is not done. ``tasks_done``:
  tasks whose every call succeeded (``task_success = tasks_done / tasks``).
* ``within_sla``: the share of the demand that succeeded with added latency within the class's
  ``sla_p95``; the class meets its SLA when that share is at least 95 %.
* ``added latency``: completion time - first attempt - upstream service time, i.e. everything
  the limiter added (deferred admission, backoff, Retry-After); percentiles over the calls done.
* per attempt (what the policy induced): ``calls``: original calls started (one per script
  step); ``attempts``: decisions asked, retries included; ``retry_amplification = attempts /
  calls``; ``admitted`` / ``refused``: attempts the gateway allowed (now or after a wait) /
  refused; ``upstream_refused``: admitted attempts the provider answered with its own 429 (over
  its quota); ``http_429 = refused + upstream_refused``; ``succeeded``: calls that finished;
  ``gave_up``: calls the client abandoned (retries exhausted, or a refusal it must not retry).
* tokens: ``actual`` usage of calls the provider served, counted when the upstream call
  starts, compared with the provider quota (the pool's token rate): over the whole run and in
  the busiest minute; ``wasted_tokens``: tokens of admitted calls the provider refused (sent
  upstream for nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``nan`` when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class Accumulator:
    """Mutable counters for one (group, class) during a run (hot path: plain slots)."""

    __slots__ = (
        "calls",
        "attempts",
        "admitted",
        "waited",
        "refused",
        "upstream_refused",
        "succeeded",
        "gave_up",
        "tokens",
        "latencies",
        "demand",
        "done",
        "tasks",
        "tasks_done",
        "wasted_tokens",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.attempts = 0
        self.admitted = 0
        self.waited = 0
        self.refused = 0
        self.upstream_refused = 0
        self.succeeded = 0
        self.gave_up = 0
        self.tokens = 0.0
        self.latencies: list[float] = []
        self.demand = 0
        self.done = 0
        self.tasks = 0
        self.tasks_done = 0
        self.wasted_tokens = 0.0


@dataclass(frozen=True, slots=True)
class ClassStats:
    """Final figures for one (group, class); see the module docstring."""

    group: str
    workload_class: str
    calls: int
    attempts: int
    admitted: int
    waited: int
    refused: int
    upstream_refused: int
    succeeded: int
    gave_up: int
    tokens: float
    p50: float
    p95: float
    p99: float
    sla: float | None
    within_sla: float
    demand: int = 0
    done: int = 0
    tasks: int = 0
    tasks_done: int = 0
    wasted_tokens: float = 0.0

    @property
    def goodput(self) -> float:
        """Share of the demand done."""
        return self.done / self.demand if self.demand else 1.0

    @property
    def task_success(self) -> float:
        """Share of the demand's tasks whose every call succeeded."""
        return self.tasks_done / self.tasks if self.tasks else 1.0

    @property
    def http_429(self) -> int:
        return self.refused + self.upstream_refused

    @property
    def retry_amplification(self) -> float:
        return self.attempts / self.calls if self.calls else 0.0

    @property
    def success(self) -> float:
        return self.succeeded / self.calls if self.calls else 0.0

    @property
    def meets_sla(self) -> bool:
        return self.within_sla >= 0.95

    @classmethod
    def of(cls, group: str, klass: str, acc: Accumulator, sla: float | None) -> ClassStats:
        lat = sorted(acc.latencies)
        ok = len(lat) if sla is None else sum(1 for x in lat if x <= sla + 1e-9)
        within = ok / acc.demand if acc.demand else 1.0
        return cls(
            group, klass, acc.calls, acc.attempts, acc.admitted, acc.waited, acc.refused,
            acc.upstream_refused, acc.succeeded, acc.gave_up, acc.tokens,
            percentile(lat, 0.50), percentile(lat, 0.95), percentile(lat, 0.99), sla, within,
            acc.demand, acc.done, acc.tasks, acc.tasks_done, acc.wasted_tokens,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "class": self.workload_class,
            "demand": self.demand,
            "done": self.done,
            "goodput": round(self.goodput, 6),
            "tasks": self.tasks,
            "tasks_done": self.tasks_done,
            "task_success": round(self.task_success, 6),
            "calls": self.calls,
            "attempts": self.attempts,
            "admitted": self.admitted,
            "waited": self.waited,
            "refused": self.refused,
            "upstream_refused": self.upstream_refused,
            "succeeded": self.succeeded,
            "gave_up": self.gave_up,
            "tokens": self.tokens,
            "wasted_tokens": self.wasted_tokens,
            "retry_amplification": round(self.retry_amplification, 6),
            "p50": _num(self.p50),
            "p95": _num(self.p95),
            "p99": _num(self.p99),
            "sla": self.sla,
            "within_sla": round(self.within_sla, 6),
        }


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


@dataclass(slots=True)
class RunResult:
    """One scenario run against one policy."""

    scenario: str
    policy: str
    seed: int
    duration: float
    stats: list[ClassStats]
    #: Time series, one value per bin of ``bin_width`` seconds. Refused counts every 429 a
    #: client saw (the gateway's and the provider's).
    bin_width: float
    admitted_series: dict[str, list[int]]
    refused_series: dict[str, list[int]]
    tokens_series: list[float]
    quota_tokens_per_min: float
    quota_requests_per_min: float
    #: Ascending added latencies of succeeded calls, per class (for CDFs).
    latencies: dict[str, list[float]]
    #: How often each bucket name refused an attempt.
    refused_by: dict[str, int]
    notes: list[str] = field(default_factory=list)
    provider: bool = True
    decisions: int = 0
    wall_time: float = 0.0

    # -- totals -------------------------------------------------------------------------------
    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.stats)

    @property
    def attempts(self) -> int:
        return sum(s.attempts for s in self.stats)

    @property
    def refused(self) -> int:
        return sum(s.refused for s in self.stats)

    @property
    def upstream_refused(self) -> int:
        return sum(s.upstream_refused for s in self.stats)

    @property
    def tokens(self) -> float:
        return sum(s.tokens for s in self.stats)

    @property
    def demand(self) -> int:
        return sum(s.demand for s in self.stats)

    @property
    def done(self) -> int:
        return sum(s.done for s in self.stats)

    @property
    def wasted_tokens(self) -> float:
        return sum(s.wasted_tokens for s in self.stats)

    @property
    def quota_tokens(self) -> float:
        """The provider's token quota over the scenario's duration."""
        return self.quota_tokens_per_min * self.duration / 60.0

    def tokens_last_minute(self) -> list[float]:
        """Per bin, the tokens served in the trailing minute (whole bins), per minute."""
        per_bin = self.tokens_series
        width = max(1, round(60.0 / self.bin_width))
        factor = 60.0 / (width * self.bin_width)
        out: list[float] = []
        running = 0.0
        for i, value in enumerate(per_bin):
            running += value
            if i >= width:
                running -= per_bin[i - width]
            out.append(max(0.0, running) * factor)
        return out

    @property
    def peak_tokens_per_min(self) -> float:
        """The busiest minute of served tokens (a sliding window of whole bins)."""
        return max(self.tokens_last_minute(), default=0.0)

    @property
    def active_bins(self) -> int:
        """Bins up to the last one with any traffic (plots stop there)."""
        last = 0
        for series in (*self.admitted_series.values(), *self.refused_series.values()):
            for i in range(len(series) - 1, last - 1, -1):
                if series[i]:
                    last = i
                    break
        return last + 1

    def by_class(self) -> dict[str, ClassStats]:
        """Stats merged over groups, per class (percentiles from the merged latencies)."""
        out: dict[str, ClassStats] = {}
        for klass in sorted({s.workload_class for s in self.stats}):
            rows = [s for s in self.stats if s.workload_class == klass]
            acc = Accumulator()
            for s in rows:
                acc.calls += s.calls
                acc.attempts += s.attempts
                acc.admitted += s.admitted
                acc.waited += s.waited
                acc.refused += s.refused
                acc.upstream_refused += s.upstream_refused
                acc.succeeded += s.succeeded
                acc.gave_up += s.gave_up
                acc.tokens += s.tokens
                acc.demand += s.demand
                acc.done += s.done
                acc.tasks += s.tasks
                acc.tasks_done += s.tasks_done
                acc.wasted_tokens += s.wasted_tokens
            acc.latencies = self.latencies.get(klass, [])
            out[klass] = ClassStats.of("*", klass, acc, rows[0].sla)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything but wall time (deterministic for a seed)."""
        return {
            "scenario": self.scenario,
            "policy": self.policy,
            "seed": self.seed,
            "duration": self.duration,
            "demand": self.demand,
            "done": self.done,
            "calls": self.calls,
            "attempts": self.attempts,
            "decisions": self.decisions,
            "provider": self.provider,
            "upstream_refused": self.upstream_refused,
            "tokens": self.tokens,
            "wasted_tokens": self.wasted_tokens,
            "quota_tokens_per_min": self.quota_tokens_per_min,
            "peak_tokens_per_min": round(self.peak_tokens_per_min, 3),
            "stats": [s.to_dict() for s in self.stats],
            "refused_by": dict(sorted(self.refused_by.items())),
            "notes": list(self.notes),
        }
