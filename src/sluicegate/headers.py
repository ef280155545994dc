"""Every rate-limit HTTP header, rendered from a :class:`~sluicegate.engine.Decision` here only.

* IETF ``RateLimit-Policy`` / ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-10,
  structured field lists): one item per plane and axis, e.g.
  ``RateLimit-Policy: "tenant-requests";q=600;w=60, "session-tokens";q=100000;w=60;qu="tokens"``
  and ``RateLimit: "tenant-requests";r=119;t=1, ...``. ``q``/``w`` state the rate (quota per
  window); ``r`` counts whole units left now and ``t`` is the seconds until the bucket is full.
* OpenAI-compatible ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, describing the
  *tightest* bucket of each axis (fewest units left), reset in OpenAI's ``6m0s`` style.
* ``Retry-After`` (integer seconds, at least 1) and ``retry-after-ms`` when refused; the
  official OpenAI SDK prefers the latter and honours both.
* ``x-ratelimit-burst`` for limits with an adaptive burst: the burst this call was checked
  against, e.g. ``"agent-requests";b=32`` (a structured list like ``RateLimit``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sluicegate.policy.resolve import Axis, Rule

if TYPE_CHECKING:  # the engine imports this module; no import cycle at run time
    from sluicegate.engine.decision import Decision

_UNIT = {
    Axis.REQUESTS: "",
    Axis.TOKENS: ';qu="tokens"',
    Axis.COST: ';qu="cost-units"',
    Axis.CONCURRENCY: ';qu="concurrent-requests"',
    Axis.RETRIES: "",
    Axis.SHARE: "",
    Axis.DEMAND: "",
}
#: Buckets kept after the rate limits in a plan: rendered by their own headers, if at all.
_NOT_LIMITS = (Axis.RETRIES, Axis.SHARE, Axis.DEMAND)


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String`` rounded to milliseconds, as OpenAI does:
    ``0s``, ``250ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if seconds <= 0:
        return "0s"
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def quota_window(count: float, period: float) -> tuple[int, int]:
    """``(q, w)`` as the draft requires them: non-negative integers, ``w >= 1`` second. A
    fractional count or sub-second period is scaled up exactly where a small multiple allows
    (7.5/min -> q=15;w=120, 10/100ms -> q=100;w=1), else rounded down (never overstated)."""
    for k in (1, 2, 3, 4, 5, 8, 10, 20, 25, 50, 100, 1000):
        q, w = count * k, period * k
        if w >= 1 and abs(q - round(q)) < 1e-9 and abs(w - round(w)) < 1e-9:
            return int(round(q)), int(round(w))
    w = max(1, math.ceil(period))
    return max(0, math.floor(count * w / period)), w


def policy_item(rule: Rule) -> str:
    """The ``RateLimit-Policy`` item of one rule. ``qu`` is omitted for requests (the draft's
    default unit) and is ``concurrent-requests`` for in-flight limits; ``tokens`` and
    ``cost-units`` are not in the draft's quota-unit registry, so clients that only know the
    registered units should treat those items as opaque."""
    if rule.rate is None:
        return f'"{rule.name}";q={rule.capacity:.0f}{_UNIT[rule.axis]}'
    q, w = quota_window(rule.rate.count, rule.rate.period)
    return f'"{rule.name}";q={q};w={w}{_UNIT[rule.axis]}'


@dataclass(frozen=True, slots=True)
class HeaderPlan:
    """The static part of the headers for one tuple of rules, computed once per engine plan."""

    policy: str
    state_prefixes: tuple[str, ...]
    # (header suffix, indexes of that axis' buckets, their capacities as text)
    openai: tuple[tuple[str, tuple[int, ...], tuple[str, ...]], ...]
    #: Index of the retry-budget bucket (rendered as ``x-ratelimit-retry-budget``), if any.
    budget_index: int | None = None


def header_plan(rules: Sequence[Rule]) -> HeaderPlan:
    """Precompute everything about the headers that does not change from call to call.

    Rate limits come first in an engine plan; retry-budget and per-trace buckets (axis
    ``retries``) follow them and are not rate limits, so they get their own header instead of
    ``RateLimit`` items."""
    budget_index = next((i for i, r in enumerate(rules) if r.axis is Axis.RETRIES), None)
    cut = next((i for i, r in enumerate(rules) if r.axis in _NOT_LIMITS), len(rules))
    rules = rules[:cut]
    openai = []
    for axis, suffix in ((Axis.REQUESTS, "requests"), (Axis.TOKENS, "tokens")):
        idx = tuple(i for i, r in enumerate(rules) if r.axis is axis)
        if idx:
            openai.append((suffix, idx, tuple(f"{rules[i].capacity:.0f}" for i in idx)))
    return HeaderPlan(
        policy=", ".join(policy_item(r) for r in rules),
        state_prefixes=tuple(f'"{r.name}";r=' for r in rules),
        openai=tuple(openai),
        budget_index=budget_index,
    )


def render_headers(decision: Decision) -> list[tuple[str, str]]:
    """All rate-limit headers for a decision, as ``(name, value)`` pairs (lower-case names)."""
    headers: list[tuple[str, str]] = []
    result = decision.result
    plan = decision.header_plan
    if result is not None and decision.rules:
        if plan is None:
            plan = header_plan(decision.rules)
        remaining = result.remaining
        reset = result.reset
        ceil = math.ceil
        if plan.state_prefixes:
            headers.append(("ratelimit-policy", plan.policy))
            # strict=False: retry buckets after the rate limits have no RateLimit item.
            state = ", ".join(
                [
                    f"{p}{n};t={ceil(t)}"
                    for p, n, t in zip(plan.state_prefixes, remaining, reset, strict=False)
                ]
            )
            headers.append(("ratelimit", state))
        bursts = dict(decision.bursts) if decision.bursts else None
        for suffix, idx, caps in plan.openai:
            best = 0
            low = remaining[idx[0]]
            for j in range(1, len(idx)):
                if remaining[idx[j]] < low:
                    best, low = j, remaining[idx[j]]
            cap = caps[best]
            if bursts is not None:  # an adaptive burst: the capacity this call was checked on
                burst = bursts.get(decision.rules[idx[best]].name)
                cap = cap if burst is None else f"{burst:.0f}"
            headers.append((f"x-ratelimit-limit-{suffix}", cap))
            headers.append((f"x-ratelimit-remaining-{suffix}", str(low)))
            headers.append((f"x-ratelimit-reset-{suffix}", go_duration(reset[idx[best]])))
        if plan.budget_index is not None:
            headers.append(("x-ratelimit-retry-budget", str(remaining[plan.budget_index])))
        if decision.bursts:
            items = ", ".join(f'"{name}";b={math.floor(b)}' for name, b in decision.bursts)
            headers.append(("x-ratelimit-burst", items))
    if decision.init_tier:
        headers.append(("x-agent-init-tier", "active"))
    if decision.reason == "retry_budget_exhausted" and not decision.allowed:
        # The official OpenAI SDK honours this and stops retrying.
        headers.append(("x-should-retry", "false"))
    if not decision.allowed and decision.retry_after is not None:
        retry = decision.retry_after
        if math.isfinite(retry):
            headers.append(("retry-after", str(max(1, math.ceil(retry)))))
            headers.append(("retry-after-ms", str(max(1, math.ceil(retry * 1000)))))
    return headers
