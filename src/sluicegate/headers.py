"""Every rate-limit HTTP header, rendered from a :class:`~sluicegate.engine.Decision` here only.

* IETF ``RateLimit-Policy`` / ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers, structured
  field lists): one item per plane and axis, e.g.
  ``RateLimit-Policy: "tenant-requests";q=600;w=60, "session-tokens";q=100000;w=60;qu="tokens"``
  and ``RateLimit: "tenant-requests";r=119;t=1, ...``. ``q``/``w`` state the rate (quota per
  window); ``r`` counts whole units left now and ``t`` is the seconds until the bucket is full.
* OpenAI-compatible ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, describing the
  *tightest* bucket of each axis (fewest units left), reset in OpenAI's ``6m0s`` style.
* ``Retry-After`` (integer seconds, at least 1) and ``retry-after-ms`` when refused; the
  official OpenAI SDK prefers the latter and honours both.
"""

from __future__ import annotations

import math

from sluicegate.engine.decision import Decision, Outcome
from sluicegate.policy.resolve import Axis, Rule

_UNIT = {
    Axis.REQUESTS: "",
    Axis.TOKENS: ';qu="tokens"',
    Axis.COST: ';qu="cost-units"',
    Axis.CONCURRENCY: ';qu="concurrent-requests"',
}


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


def policy_item(rule: Rule) -> str:
    """The ``RateLimit-Policy`` item of one rule."""
    if rule.rate is None:
        return f'"{rule.name}";q={rule.capacity:.0f}{_UNIT[rule.axis]}'
    quota = rule.rate.count
    q = f"{quota:.0f}" if quota == int(quota) else f"{quota:.3f}".rstrip("0")
    return f'"{rule.name}";q={q};w={math.ceil(rule.rate.period)}{_UNIT[rule.axis]}'


_policy_cache: dict[Rule, str] = {}


def _policy_item_cached(rule: Rule) -> str:
    item = _policy_cache.get(rule)
    if item is None:
        item = policy_item(rule)
        if len(_policy_cache) < 10_000:
            _policy_cache[rule] = item
    return item


def render_headers(decision: Decision) -> list[tuple[str, str]]:
    """All rate-limit headers for a decision, as ``(name, value)`` pairs (lower-case names)."""
    rules = decision.rules
    results = decision.results
    headers: list[tuple[str, str]] = []
    if rules:
        policy_items = []
        state_items = []
        best: dict[Axis, tuple[int, Rule, float]] = {}
        for rule, res in zip(rules, results, strict=True):
            policy_items.append(_policy_item_cached(rule))
            remaining = res.remaining
            reset = res.reset
            state_items.append(f'"{rule.name}";r={remaining};t={math.ceil(reset)}')
            axis = rule.axis
            cur = best.get(axis)
            if cur is None or remaining < cur[0]:
                best[axis] = (remaining, rule, reset)
        headers.append(("ratelimit-policy", ", ".join(policy_items)))
        headers.append(("ratelimit", ", ".join(state_items)))
        for axis, suffix in ((Axis.REQUESTS, "requests"), (Axis.TOKENS, "tokens")):
            picked = best.get(axis)
            if picked is not None:
                remaining, rule, reset = picked
                headers.append((f"x-ratelimit-limit-{suffix}", f"{rule.capacity:.0f}"))
                headers.append((f"x-ratelimit-remaining-{suffix}", str(remaining)))
                headers.append((f"x-ratelimit-reset-{suffix}", go_duration(reset)))
    if decision.outcome is Outcome.REFUSE and decision.retry_after is not None:
        retry = decision.retry_after
        if math.isfinite(retry):
            headers.append(("retry-after", str(max(1, math.ceil(retry)))))
            headers.append(("retry-after-ms", str(max(1, math.ceil(retry * 1000)))))
    return headers
